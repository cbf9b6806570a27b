//! `treecmp LEFT RIGHT`: compares two directory trees (types, modes, owners, sizes,
//! contents, symlink targets, devices, xattrs, hardlink grouping, optionally mtimes) and
//! prints every difference. Exit status 0 = equal, 1 = different, 2 = error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use integration::treecmp::{compare_trees, CompareOptions};

#[derive(Parser)]
#[command(about = "Compare two directory trees (metadata, contents, xattrs, hardlinks)")]
struct Args {
    /// Left tree (e.g. the expected extraction).
    left: PathBuf,
    /// Right tree (e.g. a FUSE mount).
    right: PathBuf,
    /// Also compare mtimes (seconds).
    #[arg(long)]
    mtime: bool,
    /// Relative path whose mtime is not compared (repeatable).
    #[arg(long = "mtime-ignore")]
    mtime_ignore: Vec<PathBuf>,
    /// Relative path left out on both sides, with everything below it (repeatable).
    #[arg(long)]
    ignore: Vec<PathBuf>,
    /// Xattr name not compared; trailing `*` for a prefix (repeatable).
    #[arg(long = "ignore-xattr")]
    ignore_xattr: Vec<String>,
    /// Do not compare file contents.
    #[arg(long)]
    no_content: bool,
    /// Do not compare hardlink grouping.
    #[arg(long)]
    no_hardlinks: bool,
    /// Maximum number of differences listed.
    #[arg(long, default_value_t = 1000)]
    max: usize,
    /// Print only the summary line.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = CompareOptions {
        mtime: a.mtime,
        mtime_ignore: a.mtime_ignore.into_iter().collect(),
        ignore: a.ignore.into_iter().collect(),
        ignore_xattrs: a.ignore_xattr,
        contents: !a.no_content,
        hardlinks: !a.no_hardlinks,
        dir_sizes: false,
        max_mismatches: a.max,
    };
    match compare_trees(&a.left, &a.right, &opts) {
        Err(e) => {
            eprintln!("treecmp: {e}");
            ExitCode::from(2)
        }
        Ok(d) => {
            if a.quiet {
                println!(
                    "{} mismatches ({} entries left, {} right)",
                    d.mismatches.len(),
                    d.left_entries,
                    d.right_entries
                );
            } else {
                println!("{d}");
            }
            if d.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

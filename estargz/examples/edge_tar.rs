//! Writes a test tar to a file: `edge_tar OUT [--portable | --lost-names]`.
//!
//! Default: the edge-case tar. `--portable` leaves out what the reference converter
//! cannot carry through its TOC (non-UTF-8 names, sub-second mtimes), for the ctr-remote
//! interop fixtures; `--lost-names` is the tar of names that converter loses (for the
//! fixtures of `estargz::lost_names`).

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .expect("usage: edge_tar OUT [--portable | --lost-names]");
    let tar = match args.next().as_deref() {
        Some("--portable") => estargz::testutil::portable_edge_case_tar(),
        Some("--lost-names") => estargz::testutil::lost_names_tar(),
        _ => estargz::testutil::edge_case_tar(),
    };
    std::fs::write(&out, tar).expect("write the tar");
}

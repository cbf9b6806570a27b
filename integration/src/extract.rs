//! Expected results for equivalence tests: apply a layer blob (tar, gzip incl. multi-member
//! eStargz, or zstd) to a directory — either as an overlayfs lower dir (whiteouts become 0/0
//! character devices, opaque markers the `trusted.overlay.opaque=y` xattr), or "flat" onto
//! the lower layers' contents the way containerd's applier does (whiteouts delete).
//! Independent of the code under test: written directly on `tar` + syscalls.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, IoContext, Result};

/// How whiteouts and opaque markers are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// As an overlayfs lower dir: `.wh.NAME` -> char device 0/0 `NAME` (mode 0, owner and
    /// mtime from the entry), `.wh..wh..opq` -> xattr `<prefix>.overlay.opaque = "y"` on its dir.
    Overlay,
    /// Onto a directory holding the lower layers: `.wh.NAME` deletes `NAME`, `.wh..wh..opq`
    /// deletes everything in its dir not written by this layer.
    Flat,
}

/// Extraction options.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// Opaque xattr name for [`Whiteouts::Overlay`] (`trusted.overlay.opaque`, or
    /// `user.overlay.opaque` for overlay mounted with `userxattr`).
    pub opaque_xattr: String,
    /// Root-level names to leave out (e.g. eStargz's `stargz.index.json`, landmarks).
    pub skip_root_names: Vec<Vec<u8>>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            whiteouts: Whiteouts::Overlay,
            opaque_xattr: "trusted.overlay.opaque".into(),
            skip_root_names: Vec::new(),
        }
    }
}

impl ExtractOptions {
    /// Overlay lower-dir form (default).
    pub fn overlay() -> Self {
        Self::default()
    }

    /// Flat (containerd applier) form.
    pub fn flat() -> Self {
        ExtractOptions {
            whiteouts: Whiteouts::Flat,
            ..Self::default()
        }
    }

    /// Leaves out eStargz metadata entries (`stargz.index.json`, `.prefetch.landmark`,
    /// `.no.prefetch.landmark`), which a lazy filesystem hides.
    pub fn skip_estargz_metadata(mut self) -> Self {
        self.skip_root_names.extend([
            b"stargz.index.json".to_vec(),
            b".prefetch.landmark".to_vec(),
            b".no.prefetch.landmark".to_vec(),
        ]);
        self
    }
}

/// What an extraction did.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Directories created because entries lacked their parent dir entries (relative paths).
    pub implicit_dirs: BTreeSet<PathBuf>,
    /// Number of tar entries applied.
    pub entries: usize,
}

/// Opens a layer blob, detecting gzip / zstd / plain tar by magic bytes.
pub fn open_blob(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .ctx(|| format!("read {}", path.display()))?;
    f.seek(SeekFrom::Start(0))
        .ctx(|| format!("seek {}", path.display()))?;
    let f = BufReader::with_capacity(1 << 20, f);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(f).ctx(|| format!("zstd {}", path.display()))?)
    } else {
        Box::new(f)
    })
}

/// Extracts the layer blob at `blob` into `dest` (created if missing).
pub fn extract_layer(blob: &Path, dest: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    let r = open_blob(blob)?;
    extract_tar(r, dest, opts).map_err(|e| match e {
        Error::Invalid { what, reason } => {
            Error::invalid(format!("{what} in {}", blob.display()), reason)
        }
        other => other,
    })
}

/// Extracts each blob into `<root>/<i>` (bottom first, overlay form); returns the dirs.
pub fn extract_layers(
    blobs: &[PathBuf],
    root: &Path,
    opts: &ExtractOptions,
) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        let d = root.join(i.to_string());
        extract_layer(b, &d, opts)?;
        dirs.push(d);
    }
    Ok(dirs)
}

fn clean_rel(raw: &[u8]) -> Result<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::invalid(
                    "tar entry path",
                    String::from_utf8_lossy(raw).into_owned(),
                ))
            }
        }
    }
    Ok(out)
}

struct Extractor<'a> {
    dest: PathBuf,
    opts: &'a ExtractOptions,
    report: ExtractReport,
    explicit_dirs: HashSet<PathBuf>,
    written: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, u64)>,
}

/// Extracts an uncompressed tar stream into `dest`.
pub fn extract_tar(r: impl Read, dest: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    std::fs::create_dir_all(dest).ctx(|| format!("create {}", dest.display()))?;
    let mut x = Extractor {
        dest: dest.to_path_buf(),
        opts,
        report: ExtractReport::default(),
        explicit_dirs: HashSet::new(),
        written: HashSet::new(),
        dir_times: Vec::new(),
    };
    let mut ar = tar::Archive::new(r);
    for ent in ar.entries().ctx(|| "read tar".into())? {
        let ent = ent.ctx(|| "read tar entry".into())?;
        x.apply(ent)?;
        x.report.entries += 1;
    }
    // directory times last, deepest first, so that creating children does not change them
    x.dir_times
        .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, t) in std::mem::take(&mut x.dir_times) {
        set_times(&x.dest.join(&p), t)?;
    }
    x.report
        .implicit_dirs
        .retain(|d| !x.explicit_dirs.contains(d));
    Ok(x.report)
}

fn set_times(p: &Path, secs: u64) -> Result<()> {
    let ts = TimeSpec::new(secs as i64, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| Error::sys(format!("utimensat {}", p.display()), e))
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).ctx(|| format!("remove {}", p.display())),
        Ok(_) => std::fs::remove_file(p).ctx(|| format!("remove {}", p.display())),
    }
}

impl Extractor<'_> {
    /// Makes sure every parent of `rel` exists as a real directory (never a symlink).
    fn parents(&mut self, rel: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            cur.push(c);
            let abs = self.dest.join(&cur);
            match std::fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::invalid(
                        "tar entry path",
                        format!(
                            "parent {} of {} is not a directory in this layer",
                            cur.display(),
                            rel.display()
                        ),
                    ))
                }
                Err(_) => {
                    std::fs::create_dir(&abs).ctx(|| format!("mkdir {}", abs.display()))?;
                    std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o755))
                        .ctx(|| format!("chmod {}", abs.display()))?;
                    self.report.implicit_dirs.insert(cur.clone());
                }
            }
        }
        Ok(())
    }

    fn apply<R: Read>(&mut self, mut ent: tar::Entry<'_, R>) -> Result<()> {
        let raw = ent.path_bytes().into_owned();
        let rel = clean_rel(&raw)?;
        if rel.as_os_str().is_empty() {
            // the root itself ("./"): apply its metadata
            if ent.header().entry_type().is_dir() {
                let (mode, uid, gid, mtime) = meta(ent.header())?;
                self.finish_meta(Path::new(""), mode, uid, gid, &xattrs(&mut ent)?, true)?;
                self.dir_times.push((PathBuf::new(), mtime));
            }
            return Ok(());
        }
        if rel.components().count() == 1
            && self
                .opts
                .skip_root_names
                .iter()
                .any(|n| n.as_slice() == rel.as_os_str().as_bytes())
        {
            return Ok(());
        }
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        self.parents(&rel)?;
        if name == b".wh..wh..opq" {
            return self.opaque(&parent);
        }
        if let Some(target) = name.strip_prefix(b".wh.") {
            let victim = parent.join(OsStr::from_bytes(target));
            return self.whiteout(&victim, ent.header());
        }
        let abs = self.dest.join(&rel);
        let h = ent.header().clone();
        let ty = h.entry_type();
        let (mode, uid, gid, mtime) = meta(&h)?;
        let xa = xattrs(&mut ent)?;
        // replace whatever is there, except a directory over a directory (merge)
        let existing = std::fs::symlink_metadata(&abs).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && ty.is_dir()) {
                remove_any(&abs)?;
            }
        }
        self.written.insert(rel.clone());
        match ty {
            t if t.is_dir() => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    std::fs::create_dir(&abs).ctx(|| format!("mkdir {}", abs.display()))?;
                }
                self.explicit_dirs.insert(rel.clone());
                self.finish_meta(&rel, mode, uid, gid, &xa, true)?;
                self.dir_times.push((rel, mtime));
                return Ok(());
            }
            t if t.is_file() || t == tar::EntryType::Continuous => {
                write_file(&mut ent, &abs)?;
            }
            t if t.is_symlink() => {
                let target = ent.link_name_bytes().ok_or_else(|| {
                    Error::invalid("symlink entry", format!("{} has no target", rel.display()))
                })?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .ctx(|| format!("symlink {}", abs.display()))?;
            }
            t if t.is_hard_link() => {
                let target = ent.link_name_bytes().ok_or_else(|| {
                    Error::invalid("hardlink entry", format!("{} has no target", rel.display()))
                })?;
                let trel = clean_rel(&target)?;
                let tabs = self.dest.join(&trel);
                std::fs::hard_link(&tabs, &abs)
                    .ctx(|| format!("link {} -> {}", abs.display(), tabs.display()))?;
                // a hardlink shares the target's inode and metadata
                return Ok(());
            }
            t if t.is_character_special() || t.is_block_special() || t.is_fifo() => {
                let kind = if t.is_character_special() {
                    SFlag::S_IFCHR
                } else if t.is_block_special() {
                    SFlag::S_IFBLK
                } else {
                    SFlag::S_IFIFO
                };
                let dev = nix::sys::stat::makedev(
                    h.device_major().ok().flatten().unwrap_or(0) as u64,
                    h.device_minor().ok().flatten().unwrap_or(0) as u64,
                );
                nix::sys::stat::mknod(&abs, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| Error::sys(format!("mknod {}", abs.display()), e))?;
            }
            other => {
                return Err(Error::invalid(
                    "tar entry",
                    format!("{}: unsupported type {other:?}", rel.display()),
                ));
            }
        }
        self.finish_meta(&rel, mode, uid, gid, &xa, !ty.is_symlink())?;
        set_times(&abs, mtime)
    }

    /// chown first (it clears setuid bits and security.capability), then chmod, then xattrs.
    fn finish_meta(
        &mut self,
        rel: &Path,
        mode: u32,
        uid: u64,
        gid: u64,
        xa: &[(String, Vec<u8>)],
        chmod: bool,
    ) -> Result<()> {
        let abs = self.dest.join(rel);
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &abs,
            Some(Uid::from_raw(uid as u32)),
            Some(Gid::from_raw(gid as u32)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::sys(format!("chown {}", abs.display()), e))?;
        if chmod {
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777))
                .ctx(|| format!("chmod {}", abs.display()))?;
        }
        for (k, v) in xa {
            xattr::set(&abs, k, v).ctx(|| format!("setxattr {k} on {}", abs.display()))?;
        }
        Ok(())
    }

    fn opaque(&mut self, dir: &Path) -> Result<()> {
        let abs = self.dest.join(dir);
        if !abs.is_dir() {
            std::fs::create_dir_all(&abs).ctx(|| format!("mkdir {}", abs.display()))?;
            self.report.implicit_dirs.insert(dir.to_path_buf());
        }
        match self.opts.whiteouts {
            Whiteouts::Overlay => xattr::set(&abs, &self.opts.opaque_xattr, b"y")
                .ctx(|| format!("set opaque xattr on {}", abs.display())),
            Whiteouts::Flat => {
                for e in std::fs::read_dir(&abs).ctx(|| format!("read dir {}", abs.display()))? {
                    let e = e.ctx(|| format!("read dir {}", abs.display()))?;
                    let rel = dir.join(e.file_name());
                    if !self.written.contains(&rel) {
                        remove_any(&e.path())?;
                    }
                }
                Ok(())
            }
        }
    }

    fn whiteout(&mut self, victim: &Path, h: &tar::Header) -> Result<()> {
        let abs = self.dest.join(victim);
        remove_any(&abs)?;
        if self.opts.whiteouts == Whiteouts::Flat {
            return Ok(());
        }
        let (_, uid, gid, mtime) = meta(h)?;
        nix::sys::stat::mknod(&abs, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| Error::sys(format!("mknod whiteout {}", abs.display()), e))?;
        self.finish_meta(victim, 0, uid, gid, &[], true)?;
        set_times(&abs, mtime)
    }
}

fn meta(h: &tar::Header) -> Result<(u32, u64, u64, u64)> {
    let bad = |what: &str, e: io::Error| Error::invalid("tar header", format!("{what}: {e}"));
    Ok((
        h.mode().map_err(|e| bad("mode", e))?,
        h.uid().map_err(|e| bad("uid", e))?,
        h.gid().map_err(|e| bad("gid", e))?,
        h.mtime().map_err(|e| bad("mtime", e))?,
    ))
}

fn xattrs<R: Read>(ent: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut v = Vec::new();
    if let Some(exts) = ent.pax_extensions().ctx(|| "read pax extensions".into())? {
        for x in exts {
            let x = x.ctx(|| "read pax record".into())?;
            if let Ok(k) = x.key() {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    v.push((name.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(v)
}

/// Writes a file, leaving holes for all-zero 64 KiB blocks (large mostly-zero test files).
fn write_file(r: &mut impl Read, abs: &Path) -> Result<()> {
    let mut f = std::fs::File::create(abs).ctx(|| format!("create {}", abs.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = r
                .read(&mut buf[filled..])
                .ctx(|| format!("read data for {}", abs.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(filled as i64))
                .ctx(|| format!("seek {}", abs.display()))?;
        } else {
            f.write_all(&buf[..filled])
                .ctx(|| format!("write {}", abs.display()))?;
        }
        len += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    f.set_len(len).ctx(|| format!("truncate {}", abs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Content, Entry, LayerBuilder};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn rejects_parent_components() {
        assert!(clean_rel(b"../x").is_err());
        assert!(clean_rel(b"a/../../x").is_err());
        assert_eq!(clean_rel(b"./a/b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_rel(b"/abs").unwrap(), PathBuf::from("abs"));
    }

    #[test]
    fn overlay_and_flat_semantics() {
        if !root() {
            eprintln!("SKIP: needs root (chown, mknod, trusted xattrs)");
            return;
        }
        let wd = crate::workdir::Workdir::new("extract").unwrap();
        let lower = LayerBuilder::new()
            .dir("d")
            .file("d/old", "o")
            .file("gone", "g")
            .dir("op")
            .file("op/lower", "l");
        let upper = LayerBuilder::new()
            .entry(Entry::whiteout("gone").owner(3, 4))
            .opaque("op")
            .file("op/new", "n")
            .entry(Entry::file(
                "imp/sub/f",
                Content::Sparse {
                    len: 300_000,
                    marks: vec![(200_000, b"x".to_vec())],
                },
            ))
            .entry(
                Entry::file("suid", "s")
                    .mode(0o4755)
                    .owner(1000, 1000)
                    .xattr("user.k", b"v"),
            )
            .hardlink("suid2", "suid")
            .entry(Entry::dir("d").mode(0o700).mtime(42));
        let tar_l = lower.write_tar(Vec::new()).unwrap();
        let tar_u = upper.write_tar(Vec::new()).unwrap();
        // overlay form
        let o = wd.join("o");
        let rep = extract_tar(&tar_u[..], &o, &ExtractOptions::overlay()).unwrap();
        let wh = std::fs::symlink_metadata(o.join("gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(
            (wh.rdev(), wh.mode() & 0o7777, wh.uid(), wh.gid()),
            (0, 0, 3, 4)
        );
        assert_eq!(
            xattr::get(o.join("op"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            rep.implicit_dirs
                .iter()
                .map(|p| p.to_str().unwrap())
                .collect::<Vec<_>>(),
            vec!["imp", "imp/sub", "op"]
        );
        let s = std::fs::metadata(o.join("suid")).unwrap();
        assert_eq!((s.mode() & 0o7777, s.uid(), s.nlink()), (0o4755, 1000, 2));
        assert_eq!(s.ino(), std::fs::metadata(o.join("suid2")).unwrap().ino());
        assert_eq!(
            xattr::get(o.join("suid"), "user.k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        let sp = std::fs::metadata(o.join("imp/sub/f")).unwrap();
        assert_eq!(sp.len(), 300_000);
        assert!(sp.blocks() * 512 < 300_000, "holes kept");
        let d = std::fs::metadata(o.join("d")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.mtime()), (0o700, 42));
        // flat form on top of the lower layer
        let f = wd.join("f");
        extract_tar(&tar_l[..], &f, &ExtractOptions::flat()).unwrap();
        extract_tar(&tar_u[..], &f, &ExtractOptions::flat()).unwrap();
        assert!(!f.join("gone").exists());
        assert!(!f.join("op/lower").exists());
        assert!(f.join("op/new").exists());
        assert!(f.join("d/old").exists(), "dir over dir merges");
    }
}

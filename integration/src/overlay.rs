//! A read-only overlayfs stack of layer directories (lowerdirs only), unmounted on drop:
//! "the overlayfs stack of extracted layers" that equivalence tests compare against; and
//! [`container`], the writable overlay a container runs on (copy-ups).

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::{Error, IoContext, Result};
use crate::mounts::{self, MountGuard};

/// A mounted read-only overlay of layer directories.
#[derive(Debug)]
pub struct OverlayStack {
    guard: Option<MountGuard>,
    target: PathBuf,
    empty: Option<PathBuf>,
}

impl OverlayStack {
    /// Mounts `layers` (bottom first, as in a manifest) read-only at `target` (created if
    /// missing). A single layer is stacked over an empty directory, since overlayfs needs
    /// two lowers without an upper. `options` are extra mount options (e.g. `userxattr`).
    pub fn mount(
        layers: &[impl AsRef<Path>],
        target: &Path,
        options: &[&str],
    ) -> Result<OverlayStack> {
        if layers.is_empty() {
            return Err(Error::invalid("overlay stack", "no layers"));
        }
        std::fs::create_dir_all(target).ctx(|| format!("create {}", target.display()))?;
        let mut lowers: Vec<PathBuf> = layers
            .iter()
            .rev()
            .map(|p| p.as_ref().to_path_buf())
            .collect();
        let mut empty = None;
        if lowers.len() == 1 {
            let e = target.with_extension("empty-lower");
            std::fs::create_dir_all(&e).ctx(|| format!("create {}", e.display()))?;
            lowers.push(e.clone());
            empty = Some(e);
        }
        for l in &lowers {
            let s = l.to_string_lossy();
            if s.contains(':') || s.contains(',') {
                return Err(Error::invalid(
                    "overlay lowerdir",
                    format!("{s} contains ':' or ','"),
                ));
            }
        }
        let mut data = format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":")
        );
        for o in options {
            data.push(',');
            data.push_str(o);
        }
        let guard = mounts::mount("overlay", target, "overlay", MsFlags::MS_RDONLY, &data)?;
        Ok(OverlayStack {
            guard: Some(guard),
            target: target.to_path_buf(),
            empty,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now.
    pub fn unmount(mut self) -> Result<()> {
        if let Some(g) = self.guard.take() {
            g.unmount()?;
        }
        Ok(())
    }
}

/// A writable overlay as a container has it: `lowers` (bottom first) under an upper and a
/// work directory in `dir`, merged at `dir/merged` (`index=off`, as containerd mounts it).
/// Returns the mount (unmounted on drop) and the upper directory.
pub fn container(lowers: &[impl AsRef<Path>], dir: &Path) -> Result<(MountGuard, PathBuf)> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let merged = dir.join("merged");
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.as_ref().display().to_string())
        .collect();
    let data = format!(
        "index=off,lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let g = mounts::mount("overlay", &merged, "overlay", MsFlags::empty(), &data)?;
    Ok((g, upper))
}

impl Drop for OverlayStack {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Some(e) = &self.empty {
            let _ = std::fs::remove_dir(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{extract_tar, ExtractOptions};
    use crate::oci::LayerBuilder;

    #[test]
    fn stacks_layers_with_whiteouts_and_opaque_dirs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (mount)");
            return;
        }
        let wd = crate::workdir::Workdir::new("overlay").unwrap();
        let l1 = LayerBuilder::new()
            .dir("a")
            .file("a/x", "1")
            .file("gone", "g")
            .dir("o")
            .file("o/old", "o");
        let l2 = LayerBuilder::new()
            .whiteout("gone")
            .opaque("o")
            .file("o/new", "n")
            .file("a/y", "2");
        let mut dirs = Vec::new();
        for (i, l) in [l1, l2].iter().enumerate() {
            let d = wd.join(format!("l{i}"));
            extract_tar(
                &l.write_tar(Vec::new()).unwrap()[..],
                &d,
                &ExtractOptions::overlay(),
            )
            .unwrap();
            dirs.push(d);
        }
        let st = OverlayStack::mount(&dirs, &wd.join("m"), &[]).unwrap();
        let m = st.path();
        assert_eq!(std::fs::read(m.join("a/x")).unwrap(), b"1");
        assert_eq!(std::fs::read(m.join("a/y")).unwrap(), b"2");
        assert!(!m.join("gone").exists());
        assert!(!m.join("o/old").exists());
        assert!(m.join("o/new").exists());
        assert!(mounts::is_mount_point(m).unwrap());
        drop(st);
        assert!(!mounts::is_mount_point(&wd.join("m")).unwrap());
        let single = OverlayStack::mount(&dirs[..1], &wd.join("s"), &[]).unwrap();
        assert!(single.path().join("gone").exists());
    }
}

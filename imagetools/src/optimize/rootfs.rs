//! Looking things up inside the container's root file system before it runs: the user
//! and group (from the image's `/etc/passwd` and `/etc/group`) and the command (along the
//! workload's `PATH`). Every path is resolved with `openat2(RESOLVE_IN_ROOT)`, so the
//! image's symlinks (absolute ones included) stay inside the root.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// Largest `/etc/passwd` or `/etc/group` read.
const MAX_DB: u64 = 4 << 20;

fn open_in(root: &OwnedFd, path: &str, flags: OFlag) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    openat2(root, path, how).map_err(io::Error::from)
}

/// A root directory to look things up in.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens the root directory.
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// Reads a small file (`Ok(None)` if it does not exist).
    fn read_small(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let fd = match open_in(&self.fd, path, OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        std::fs::File::from(fd).take(MAX_DB).read_to_end(&mut out)?;
        Ok(Some(out))
    }

    /// True if `path` is a regular file with an execute bit.
    fn is_executable(&self, path: &str) -> bool {
        match open_in(&self.fd, path, OFlag::O_PATH) {
            Ok(fd) => fstat(&fd).is_ok_and(|st| {
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
                    && st.st_mode & 0o111 != 0
            }),
            Err(_) => false,
        }
    }

    /// Where `argv0` is found: itself when it holds a `/` (relative to `cwd`), else the
    /// first executable along `path_env`.
    pub fn find_command(&self, argv0: &str, path_env: &str, cwd: &str) -> Option<String> {
        if argv0.contains('/') {
            let p = if argv0.starts_with('/') {
                argv0.to_string()
            } else {
                format!("{}/{argv0}", cwd.trim_end_matches('/'))
            };
            return self.is_executable(&p).then_some(p);
        }
        path_env
            .split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| {
                if d.starts_with('/') {
                    format!("{}/{argv0}", d.trim_end_matches('/'))
                } else {
                    format!("{}/{d}/{argv0}", cwd.trim_end_matches('/'))
                }
            })
            .find(|p| self.is_executable(p))
    }

    /// Resolves `user[:group]` (names or numbers; empty = root) to ids, like runc's
    /// `user.GetExecUser`: a user's primary group unless a group is given.
    pub fn resolve_user(&self, spec: &str) -> Result<(u32, u32), String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let io = |e: io::Error| format!("reading the image's user database: {e}");
        let passwd = self.read_small("/etc/passwd").map_err(io)?;
        let (uid, primary) = if user.is_empty() {
            (0, 0)
        } else {
            let found = passwd.as_deref().and_then(|p| find_user(p, user));
            match (found, user.parse::<u32>()) {
                (Some(ids), _) => ids,
                (None, Ok(n)) => (n, 0),
                (None, Err(_)) => {
                    return Err(format!("user {user:?} is not in the image's /etc/passwd"))
                }
            }
        };
        let gid = match group {
            None | Some("") => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    let groups = self.read_small("/etc/group").map_err(io)?;
                    groups
                        .as_deref()
                        .and_then(|db| find_group(db, g))
                        .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?
                }
            },
        };
        Ok((uid, gid))
    }
}

/// `(uid, gid)` of the passwd line whose name (or uid) is `user`.
fn find_user(db: &[u8], user: &str) -> Option<(u32, u32)> {
    db.split(|&b| b == b'\n').find_map(|line| {
        let f: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        if f.len() < 4 {
            return None;
        }
        let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u32>().ok();
        let (uid, gid) = (num(f[2])?, num(f[3])?);
        (f[0] == user.as_bytes() || user.parse::<u32>() == Ok(uid)).then_some((uid, gid))
    })
}

/// The gid of the group line named `group`.
fn find_group(db: &[u8], group: &str) -> Option<u32> {
    db.split(|&b| b == b'\n').find_map(|line| {
        let f: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        if f.len() < 3 || f[0] != group.as_bytes() {
            return None;
        }
        std::str::from_utf8(f[2]).ok()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn root() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("etc")).unwrap();
        std::fs::create_dir_all(p.join("usr/bin")).unwrap();
        std::fs::create_dir_all(p.join("app")).unwrap();
        std::fs::write(
            p.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nweb:x:33:34::/:/x\n",
        )
        .unwrap();
        std::fs::write(p.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        for (f, mode) in [("usr/bin/python3", 0o755), ("usr/bin/data", 0o644)] {
            std::fs::write(p.join(f), "x").unwrap();
            std::fs::set_permissions(p.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(p.join("app/run"), "x").unwrap();
        std::fs::set_permissions(p.join("app/run"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        // Absolute symlinks resolve inside the root, never on the host.
        symlink("/usr/bin/python3", p.join("usr/bin/py")).unwrap();
        symlink("/bin/sh", p.join("usr/bin/hostsh")).unwrap();
        let r = Root::open(p).unwrap();
        (d, r)
    }

    #[test]
    fn commands_are_found_inside_the_root() {
        let (_d, r) = root();
        let path = "/usr/local/bin:/usr/bin";
        assert_eq!(
            r.find_command("python3", path, "/").as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(
            r.find_command("py", path, "/").as_deref(),
            Some("/usr/bin/py")
        );
        assert_eq!(r.find_command("hostsh", path, "/"), None);
        assert_eq!(r.find_command("data", path, "/"), None);
        assert_eq!(r.find_command("sh", path, "/"), None);
        assert_eq!(
            r.find_command("./run", path, "/app").as_deref(),
            Some("/app/./run")
        );
        assert_eq!(
            r.find_command("/usr/bin/python3", "", "/").as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(r.find_command("/etc/passwd", path, "/"), None);
    }

    #[test]
    fn users_and_groups_resolve_from_the_image() {
        let (_d, r) = root();
        assert_eq!(r.resolve_user("").unwrap(), (0, 0));
        assert_eq!(r.resolve_user("web").unwrap(), (33, 34));
        assert_eq!(r.resolve_user("33").unwrap(), (33, 34));
        assert_eq!(r.resolve_user("1000").unwrap(), (1000, 0));
        assert_eq!(r.resolve_user("web:staff").unwrap(), (33, 50));
        assert_eq!(r.resolve_user("daemon:7").unwrap(), (1, 7));
        assert!(r.resolve_user("nobody").unwrap_err().contains("nobody"));
        assert!(r.resolve_user("web:wheel").unwrap_err().contains("wheel"));
    }
}

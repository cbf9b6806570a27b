//! The fd store: keeps each lazy layer's FUSE connection alive while the daemon is dead,
//! so a restarted daemon can serve the same connection again (no remount; requests of
//! running containers wait instead of failing).
//!
//! - The **holder** ([`serve_holder`], the hidden `starling fdstore` command) is a small
//!   process in its own session, one per daemon root, listening on a `SOCK_SEQPACKET` unix
//!   socket (`<root>/fdstore.sock`, mode 0600). It holds a dup of every mount's
//!   `/dev/fuse` fd with the mount's identity ([`HeldFd`]; only peers of its own uid are
//!   served), drops an fd when told or when its connection ends (the fd polls `POLLERR`
//!   after an unmount or abort), and exits when told to ([`FdStore::shutdown`]), when
//!   it holds nothing and no daemon is connected, or when it has held fds with no daemon
//!   connected for the restart grace (`[daemon] restart_grace`, [`give_up`]: it aborts the
//!   connections and detaches their mounts first, so waiting requests fail instead of
//!   hanging). A daemon that stops cleanly and leaves its mounts to the holder says so
//!   ([`FdStore::keep`]); `starling fdstore --release` makes it give up at once
//!   ([`release`]).
//! - The **client** ([`FdStore`], in the daemon) connects to the holder of its root,
//!   starting one when there is none; at connect it receives every held fd
//!   ([`FdStore::take_inherited`] hands them to the restore), then sends each new mount's
//!   fd ([`FdStore::put`]) and forgets unmounted ones ([`FdStore::remove`]). If the holder
//!   dies, the next `put` starts a new one and sends it every fd again.
//!
//! Protocol: one JSON message per packet (at most [`MAX_MESSAGE`] bytes), a request from
//! the daemon and one reply from the holder; an fd travels as `SCM_RIGHTS` with `put` and
//! with each `held` reply to `list`.

mod give_up;
mod holder;

pub use holder::serve_holder;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Largest protocol message (bytes).
pub const MAX_MESSAGE: usize = 8192;
/// Most fds one holder keeps (one per lazy layer mount).
pub const MAX_HELD: usize = 16384;
/// Most daemon connections one holder serves at once.
const MAX_CLIENTS: usize = 8;
/// How long a new holder waits for its first daemon before exiting idle.
const STARTUP_GRACE: Duration = Duration::from_secs(10);
/// How long a holder that holds nothing and has no daemon waits before exiting.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// How long the daemon waits for a reply or for a started holder.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket of the holder of the daemon root `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("fdstore.sock")
}

/// Errors of the fd store.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// The socket path does not fit a unix socket address.
    #[error("fd store socket path {0} is too long for a unix socket")]
    PathTooLong(PathBuf),
    /// A socket call failed.
    #[error("fd store {what} ({path}): {source}")]
    Socket {
        /// What was done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not a protocol message.
    #[error("fd store protocol error: {0}")]
    Protocol(String),
    /// The holder refused a request.
    #[error("fd store holder refused: {0}")]
    Refused(String),
    /// No holder runs and none could be started.
    #[error("no fd store holder at {path}: {reason}")]
    NoHolder {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What identifies a held fd: the mountpoint it serves, the mount's device number and the
/// layer digest (for logs and checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMeta {
    /// The mountpoint (canonical path), the key.
    pub mountpoint: PathBuf,
    /// `st_dev` of the mount (its FUSE connection is `minor(dev)`).
    pub dev: u64,
    /// The layer's digest.
    pub layer: String,
}

/// A FUSE connection fd taken from the store.
#[derive(Debug)]
pub struct HeldFd {
    /// Its identity.
    pub meta: HeldMeta,
    /// The `/dev/fuse` fd (a dup; the holder keeps its own).
    pub fd: OwnedFd,
}

/// A request from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Keep the attached fd (replacing one held for the same mountpoint).
    Put(HeldMeta),
    /// Close the fd held for this mountpoint.
    Drop {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Send a dup of every held fd (one `Held` reply each, then `Done`).
    List,
    /// Close everything and exit.
    Shutdown,
    /// The daemon stops and leaves its mounts here for the next one: keep every fd for at
    /// most `restart_grace_ms` with no daemon connected (0: forever).
    Keep {
        /// The restart grace in milliseconds; 0: forever.
        restart_grace_ms: u64,
    },
    /// Give up every held connection now (abort, detach its mount, close) and exit.
    /// Refused while another daemon is connected.
    Release,
    /// Answer with the holder's pid and count.
    Ping,
}

/// A reply of the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done; `held` fds are held now.
    Done {
        /// How many fds the holder holds.
        held: usize,
        /// The holder's pid.
        pid: u32,
    },
    /// One held fd (attached).
    Held(HeldMeta),
    /// The request was refused.
    Error {
        /// Why.
        message: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> FdStoreError + 'a {
    move |e| FdStoreError::Socket {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Sends one message with an optional fd.
fn send_msg<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let body = serde_json::to_vec(msg).map_err(|_| Errno::EINVAL)?;
    if body.len() > MAX_MESSAGE {
        return Err(Errno::EMSGSIZE);
    }
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    let n = socket::sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if n != body.len() {
        return Err(Errno::EMSGSIZE);
    }
    Ok(())
}

/// Outcome of receiving one message.
enum Received<T> {
    /// The peer closed the connection.
    Closed,
    /// A message and the fd that came with it.
    Message(T, Option<OwnedFd>),
    /// Bytes that are not a message (the fds that came with them are closed).
    Garbage(String),
}

/// Receives one message; extra fds beyond the first are closed.
fn recv_msg<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> nix::Result<Received<T>> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (len, truncated, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: SCM_RIGHTS installed `r` as a new fd of this process; we
                        // are its only owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    if truncated || len > MAX_MESSAGE {
        return Ok(Received::Garbage(format!(
            "message larger than {MAX_MESSAGE} bytes or with too many fds"
        )));
    }
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    drop(fds);
    match serde_json::from_slice(&buf[..len]) {
        Ok(m) => Ok(Received::Message(m, fd)),
        Err(e) => Ok(Received::Garbage(e.to_string())),
    }
}

fn unix_addr(path: &Path) -> Result<UnixAddr, FdStoreError> {
    UnixAddr::new(path).map_err(|_| FdStoreError::PathTooLong(path.to_path_buf()))
}

fn seqpacket(path: &Path) -> Result<OwnedFd, FdStoreError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("socket", path))
}

/// Connects to the holder at `path`.
fn connect(path: &Path) -> Result<OwnedFd, FdStoreError> {
    let addr = unix_addr(path)?;
    let fd = seqpacket(path)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(io("connect", path))?;
    let tv = nix::sys::time::TimeVal::new(CLIENT_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)
        .map_err(io("setsockopt", path))?;
    socket::setsockopt(&fd, socket::sockopt::SendTimeout, &tv).map_err(io("setsockopt", path))?;
    Ok(fd)
}

// ---------------------------------------------------------------------------------------
// The client.

/// How to start a holder: a program (normally the `starling` binary itself) and its
/// arguments, with stderr going to `log`.
#[derive(Debug, Clone)]
pub struct HolderCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Where its stderr goes (appended); `None`: nowhere.
    pub log: Option<PathBuf>,
}

/// The daemon's side of the fd store.
pub struct FdStore {
    path: PathBuf,
    spawn: Option<HolderCommand>,
    conn: Mutex<Option<OwnedFd>>,
    /// What this process put (dups), to hand to a new holder if the old one died.
    put: Mutex<HashMap<PathBuf, (HeldMeta, OwnedFd)>>,
    /// What the holder held when this process connected, not claimed yet.
    inherited: Mutex<HashMap<PathBuf, HeldFd>>,
}

impl std::fmt::Debug for FdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdStore")
            .field("socket", &self.path)
            .finish()
    }
}

impl FdStore {
    /// Connects to the holder at `socket`, starting one with `spawn` when none answers, and
    /// takes the fds it holds (see [`FdStore::take_inherited`]). Tried three times: a holder
    /// that was just exiting (idle) when we connected is replaced.
    pub fn open(socket: &Path, spawn: Option<HolderCommand>) -> Result<Self, FdStoreError> {
        let store = FdStore {
            path: socket.to_path_buf(),
            spawn,
            conn: Mutex::new(None),
            put: Mutex::new(HashMap::new()),
            inherited: Mutex::new(HashMap::new()),
        };
        let mut attempt = 0;
        let (conn, inherited) = loop {
            attempt += 1;
            let tried = store
                .connect_or_spawn()
                .and_then(|c| list(c.as_fd(), &store.path).map(|l| (c, l)));
            match tried {
                Ok(ok) => break ok,
                Err(e @ (FdStoreError::PathTooLong(_) | FdStoreError::NoHolder { .. })) => {
                    return Err(e)
                }
                Err(e) if attempt >= 3 => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "fd store holder did not answer; trying again");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        if !inherited.is_empty() {
            tracing::info!(
                connections = inherited.len(),
                "fd store holds FUSE connections of a previous daemon"
            );
        }
        *store.inherited.lock() = inherited
            .into_iter()
            .map(|h| (h.meta.mountpoint.clone(), h))
            .collect();
        *store.conn.lock() = Some(conn);
        Ok(store)
    }

    /// The holder's socket.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    fn connect_or_spawn(&self) -> Result<OwnedFd, FdStoreError> {
        if let Ok(c) = connect(&self.path) {
            return Ok(c);
        }
        let Some(cmd) = &self.spawn else {
            return connect(&self.path);
        };
        unix_addr(&self.path)?;
        spawn_holder(cmd).map_err(|e| FdStoreError::NoHolder {
            path: self.path.clone(),
            reason: format!("starting {}: {e}", cmd.program.display()),
        })?;
        let end = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match connect(&self.path) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= end => {
                    return Err(FdStoreError::NoHolder {
                        path: self.path.clone(),
                        reason: format!("the started holder does not answer: {e}"),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// One request and its reply on the current connection.
    fn request(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Reply, FdStoreError> {
        let guard = self.conn.lock();
        let Some(conn) = guard.as_ref() else {
            return Err(FdStoreError::NoHolder {
                path: self.path.clone(),
                reason: "not connected".into(),
            });
        };
        exchange(conn.as_fd(), req, fd, &self.path)
    }

    /// Hands the holder a dup of `fd`, the FUSE connection of the mount `meta`. If the
    /// holder is gone, a new one is started and given every fd again.
    pub fn put(&self, meta: HeldMeta, fd: BorrowedFd<'_>) -> Result<(), FdStoreError> {
        let dup = fd
            .try_clone_to_owned()
            .map_err(|source| FdStoreError::Socket {
                what: "dup",
                path: self.path.clone(),
                source,
            })?;
        let req = Request::Put(meta.clone());
        self.put.lock().insert(meta.mountpoint.clone(), (meta, dup));
        match self.request(&req, Some(fd)) {
            Ok(r) => expect_done(r),
            Err(e) => {
                tracing::warn!(error = %e, "fd store holder lost; starting a new one");
                self.reconnect()
            }
        }
    }

    /// Reconnects (starting a holder if needed) and puts every fd of this process again.
    fn reconnect(&self) -> Result<(), FdStoreError> {
        let mut conn = self.conn.lock();
        *conn = None;
        let c = self.connect_or_spawn()?;
        for (meta, fd) in self.put.lock().values() {
            expect_done(exchange(
                c.as_fd(),
                &Request::Put(meta.clone()),
                Some(fd.as_fd()),
                &self.path,
            )?)?;
        }
        *conn = Some(c);
        Ok(())
    }

    /// Records an fd taken over from the previous daemon as this process's own (so it is
    /// handed to a new holder too, should this one die).
    pub fn adopt(&self, meta: HeldMeta, fd: BorrowedFd<'_>) {
        if let Ok(dup) = fd.try_clone_to_owned() {
            self.put.lock().insert(meta.mountpoint.clone(), (meta, dup));
        }
    }

    /// Tells the holder to close the fd of `mountpoint` (the layer is being unmounted).
    pub fn remove(&self, mountpoint: &Path) -> Result<(), FdStoreError> {
        self.put.lock().remove(mountpoint);
        self.inherited.lock().remove(mountpoint);
        let req = Request::Drop {
            mountpoint: mountpoint.to_path_buf(),
        };
        expect_done(self.request(&req, None)?)
    }

    /// The fd the previous daemon left for `mountpoint`, if the holder had one. Each is
    /// handed out once.
    pub fn take_inherited(&self, mountpoint: &Path) -> Option<HeldFd> {
        self.inherited.lock().remove(mountpoint)
    }

    /// Drops the inherited fds nobody claimed (their snapshots are gone); returns how many.
    pub fn release_unclaimed(&self) -> usize {
        let left: Vec<PathBuf> = self.inherited.lock().drain().map(|(k, _)| k).collect();
        for k in &left {
            tracing::info!(mountpoint = %k.display(), "no snapshot claims this held FUSE connection; dropping it");
            if let Err(e) = self.remove(k) {
                tracing::warn!(error = %e, "fd store drop failed");
            }
        }
        left.len()
    }

    /// How many fds the holder holds, and its pid.
    pub fn ping(&self) -> Result<(usize, u32), FdStoreError> {
        match self.request(&Request::Ping, None)? {
            Reply::Done { held, pid } => Ok((held, pid)),
            r => Err(FdStoreError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// True if the holder was given (or this process adopted) the fd of `mountpoint`.
    pub fn holds(&self, mountpoint: &Path) -> bool {
        self.put.lock().contains_key(mountpoint)
    }

    /// Tells the holder that this daemon stops and leaves it every fd for the next one
    /// (clean stop without unmounting); it keeps them at most `restart_grace` with no
    /// daemon connected (`None`: forever). A lost holder is replaced and given every fd
    /// first. Returns how many fds it holds.
    pub fn keep(&self, restart_grace: Option<Duration>) -> Result<usize, FdStoreError> {
        let req = Request::Keep {
            restart_grace_ms: restart_grace.map_or(0, |d| d.as_millis().max(1) as u64),
        };
        let reply = match self.request(&req, None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "fd store holder lost; starting a new one");
                self.reconnect()?;
                self.request(&req, None)?
            }
        };
        match reply {
            Reply::Done { held, .. } => Ok(held),
            Reply::Error { message } => Err(FdStoreError::Refused(message)),
            r => Err(FdStoreError::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Tells the holder to close everything and exit (clean daemon stop, after every layer
    /// was unmounted).
    pub fn shutdown(&self) -> Result<(), FdStoreError> {
        self.put.lock().clear();
        self.inherited.lock().clear();
        let r = self.request(&Request::Shutdown, None);
        *self.conn.lock() = None;
        expect_done(r?)
    }
}

/// Makes the holder at `socket` give up every connection it holds (abort, detach the
/// mounts, close) and exit, as after its restart grace; refused while a daemon is
/// connected. Returns how many it held. For a full stop after a stop that handed over.
pub fn release(socket: &Path) -> Result<usize, FdStoreError> {
    let conn = connect(socket)?;
    match exchange(conn.as_fd(), &Request::Release, None, socket)? {
        Reply::Done { held, .. } => Ok(held),
        Reply::Error { message } => Err(FdStoreError::Refused(message)),
        r => Err(FdStoreError::Protocol(format!("unexpected reply {r:?}"))),
    }
}

fn expect_done(r: Reply) -> Result<(), FdStoreError> {
    match r {
        Reply::Done { .. } => Ok(()),
        Reply::Error { message } => Err(FdStoreError::Refused(message)),
        r => Err(FdStoreError::Protocol(format!("unexpected reply {r:?}"))),
    }
}

fn exchange(
    conn: BorrowedFd<'_>,
    req: &Request,
    fd: Option<BorrowedFd<'_>>,
    path: &Path,
) -> Result<Reply, FdStoreError> {
    send_msg(conn, req, fd).map_err(io("send", path))?;
    match recv_msg::<Reply>(conn).map_err(io("receive", path))? {
        Received::Message(r, _) => Ok(r),
        Received::Closed => Err(FdStoreError::Socket {
            what: "receive",
            path: path.to_path_buf(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        }),
        Received::Garbage(why) => Err(FdStoreError::Protocol(why)),
    }
}

/// Every held fd (dups).
fn list(conn: BorrowedFd<'_>, path: &Path) -> Result<Vec<HeldFd>, FdStoreError> {
    send_msg(conn, &Request::List, None).map_err(io("send", path))?;
    let mut out = Vec::new();
    loop {
        match recv_msg::<Reply>(conn).map_err(io("receive", path))? {
            Received::Message(Reply::Held(meta), Some(fd)) => out.push(HeldFd { meta, fd }),
            Received::Message(Reply::Held(meta), None) => {
                return Err(FdStoreError::Protocol(format!(
                    "held {} came without its fd",
                    meta.mountpoint.display()
                )))
            }
            Received::Message(r, _) => {
                expect_done(r)?;
                return Ok(out);
            }
            Received::Closed => {
                return Err(FdStoreError::Protocol(
                    "the holder closed the connection during list".into(),
                ))
            }
            Received::Garbage(why) => return Err(FdStoreError::Protocol(why)),
        }
    }
}

/// Starts a holder in its own session (it outlives this process); a thread reaps it.
fn spawn_holder(cmd: &HolderCommand) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let stderr = match &cmd.log {
        Some(p) => std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => std::process::Stdio::null(),
    };
    let mut c = std::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe and touches no state of the parent.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = c.spawn()?;
    tracing::info!(pid = child.id(), program = %cmd.program.display(), "started fd store holder");
    std::thread::Builder::new()
        .name("fdstore-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(())
}

#[cfg(test)]
mod tests;

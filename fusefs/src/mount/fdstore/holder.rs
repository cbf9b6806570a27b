//! The holder's side of the fd store (the `starling fdstore` process): its poll loop over
//! the listening socket, the connected daemons and the held fds; the requests it answers;
//! when it exits (told to, idle with nothing held, or at the end of the restart grace,
//! [`super::give_up`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, Backlog, SockFlag};

use super::give_up;
use super::{
    connect, io, recv_msg, send_msg, seqpacket, unix_addr, FdStoreError, HeldMeta, Received, Reply,
    Request, IDLE_EXIT, MAX_CLIENTS, MAX_HELD, STARTUP_GRACE,
};

/// The holder's state: held fds by mountpoint, connected daemons.
struct Holder {
    path: PathBuf,
    socket_ino: u64,
    held: HashMap<PathBuf, (HeldMeta, OwnedFd)>,
    clients: Vec<OwnedFd>,
    had_client: bool,
    idle_since: Option<Instant>,
    shutdown: bool,
    grace: give_up::Grace,
}

impl Holder {
    fn handle(
        &mut self,
        client: BorrowedFd<'_>,
        req: Request,
        fd: Option<OwnedFd>,
    ) -> nix::Result<()> {
        let pid = std::process::id();
        let reply = match req {
            Request::Put(meta) => match fd {
                None => Reply::Error {
                    message: "put without an fd".into(),
                },
                Some(_)
                    if !self.held.contains_key(&meta.mountpoint) && self.held.len() >= MAX_HELD =>
                {
                    Reply::Error {
                        message: format!("holding {MAX_HELD} fds already"),
                    }
                }
                Some(fd) => {
                    tracing::debug!(mountpoint = %meta.mountpoint.display(), layer = meta.layer, "holding FUSE connection");
                    self.held.insert(meta.mountpoint.clone(), (meta, fd));
                    Reply::Done {
                        held: self.held.len(),
                        pid,
                    }
                }
            },
            Request::Drop { mountpoint } => {
                if self.held.remove(&mountpoint).is_some() {
                    tracing::debug!(mountpoint = %mountpoint.display(), "dropped FUSE connection");
                }
                Reply::Done {
                    held: self.held.len(),
                    pid,
                }
            }
            Request::List => {
                for (meta, fd) in self.held.values() {
                    send_msg(client, &Reply::Held(meta.clone()), Some(fd.as_fd()))?;
                }
                Reply::Done {
                    held: self.held.len(),
                    pid,
                }
            }
            Request::Shutdown => {
                self.held.clear();
                self.shutdown = true;
                Reply::Done { held: 0, pid }
            }
            Request::Keep { restart_grace_ms } => {
                let limit = (restart_grace_ms > 0).then(|| Duration::from_millis(restart_grace_ms));
                self.grace.set_limit(limit);
                tracing::info!(
                    held = self.held.len(),
                    restart_grace = ?limit,
                    "the daemon stopped and left its FUSE connections here for the next one"
                );
                Reply::Done {
                    held: self.held.len(),
                    pid,
                }
            }
            Request::Release if self.clients.len() > 1 => Reply::Error {
                message: "a daemon is connected; stop it first".into(),
            },
            Request::Release => {
                let n = self.held.len();
                self.give_up("released");
                self.shutdown = true;
                Reply::Done { held: n, pid }
            }
            Request::Ping => Reply::Done {
                held: self.held.len(),
                pid,
            },
        };
        send_msg(client, &reply, None)
    }

    /// Aborts the held connections, detaches their mounts and closes the fds.
    fn give_up(&mut self, why: &str) {
        let detached = give_up::abort_and_detach(self.held.values().map(|(m, _)| m));
        tracing::warn!(
            connections = self.held.len(),
            detached = detached.len(),
            why,
            "giving up the held FUSE connections: waiting requests fail, their mounts are detached"
        );
        self.held.clear();
    }

    /// One round: wait for an event (at most 1 s), handle it. False when done.
    fn step(&mut self, listener: &OwnedFd, started: Instant) -> bool {
        let keys: Vec<PathBuf> = self.held.keys().cloned().collect();
        let (events, n_clients) = {
            let mut polls = Vec::with_capacity(1 + self.clients.len() + keys.len());
            polls.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for c in &self.clients {
                polls.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            // No events asked: only POLLERR/POLLHUP (the connection ended) wake us, never the
            // requests queued on a connection while its daemon is away.
            for k in &keys {
                polls.push(PollFd::new(self.held[k].1.as_fd(), PollFlags::empty()));
            }
            match nix::poll::poll(&mut polls, PollTimeout::from(1000u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    return false;
                }
            }
            let ev: Vec<PollFlags> = polls
                .iter()
                .map(|p| p.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (ev, self.clients.len())
        };
        // Connections that ended.
        for (i, k) in keys.iter().enumerate() {
            if events[1 + n_clients + i]
                .intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
            {
                tracing::info!(mountpoint = %k.display(), "FUSE connection ended; dropping its fd");
                self.held.remove(k);
            }
        }
        // Requests, closed clients (in reverse so removal keeps indices valid).
        for i in (0..n_clients).rev() {
            let ev = events[1 + i];
            if ev.is_empty() {
                continue;
            }
            let fd = self.clients[i].try_clone();
            let keep = match fd {
                Ok(c) => match recv_msg::<Request>(c.as_fd()) {
                    Ok(Received::Message(req, fd)) => self.handle(c.as_fd(), req, fd).is_ok(),
                    Ok(Received::Garbage(why)) => {
                        tracing::warn!(why, "bad request; closing the connection");
                        let _ = send_msg(c.as_fd(), &Reply::Error { message: why }, None);
                        false
                    }
                    Ok(Received::Closed) => false,
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => true,
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if !keep {
                self.clients.remove(i);
            }
        }
        if events[0].contains(PollFlags::POLLIN) {
            if let Ok(raw) = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                let c = unsafe { OwnedFd::from_raw_fd(raw) };
                // Only the holder's own user (root) may hand over or take FUSE connections.
                let same_user = socket::getsockopt(&c, socket::sockopt::PeerCredentials)
                    .is_ok_and(|cred| cred.uid() == nix::unistd::geteuid().as_raw());
                if !same_user {
                    tracing::warn!("refused a connection from another user");
                } else if self.clients.len() < MAX_CLIENTS {
                    self.clients.push(c);
                    self.had_client = true;
                }
            }
        }
        if self.shutdown {
            return false;
        }
        if self
            .grace
            .expired(Instant::now(), !self.held.is_empty(), self.clients.len())
        {
            let why = format!(
                "no daemon for the restart grace ({:?})",
                self.grace.limit().unwrap_or_default()
            );
            self.give_up(&why);
            return false;
        }
        // Exits idle only when holding nothing: held fds wait for a daemon (bounded by the
        // restart grace above).
        if !(self.held.is_empty() && self.clients.is_empty()) {
            self.idle_since = None;
            return true;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        !(since.elapsed() >= IDLE_EXIT && (self.had_client || started.elapsed() >= STARTUP_GRACE))
    }
}

/// Binds the holder's socket (mode 0600). A socket file nobody answers on is replaced;
/// `Ok(None)` if another holder answers there.
fn bind_holder(path: &Path) -> Result<Option<OwnedFd>, FdStoreError> {
    let addr = unix_addr(path)?;
    if path.exists() {
        if connect(path).is_ok() {
            return Ok(None);
        }
        let _ = std::fs::remove_file(path);
    }
    let fd = seqpacket(path)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        FdStoreError::Socket {
            what: "chmod",
            path: path.to_path_buf(),
            source,
        }
    })?;
    socket::listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
        .map_err(io("listen", path))?;
    Ok(Some(fd))
}

/// Runs a holder on `socket` until it is told to shut down, or has held nothing and had no
/// daemon connected for 2 s (after a first one came, or [`STARTUP_GRACE`] passed), or has
/// held fds with no daemon connected for `restart_grace` (`None`: forever; a daemon's
/// [`FdStore::keep`] sets its own). Blocking.
pub fn serve_holder(socket: &Path, restart_grace: Option<Duration>) -> Result<(), FdStoreError> {
    let Some(listener) = bind_holder(socket)? else {
        tracing::info!(socket = %socket.display(), "another fd store holder serves this socket");
        return Ok(());
    };
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "fd store holder started");
    let socket_ino = std::fs::metadata(socket).map(|m| m.ino()).unwrap_or(0);
    let mut holder = Holder {
        path: socket.to_path_buf(),
        socket_ino,
        held: HashMap::new(),
        clients: Vec::new(),
        had_client: false,
        idle_since: None,
        shutdown: false,
        grace: give_up::Grace::new(restart_grace),
    };
    let started = Instant::now();
    while holder.step(&listener, started) {}
    // Remove the socket file only if it is still ours (not replaced by a new holder's).
    if std::fs::metadata(&holder.path).map(|m| m.ino()).ok() == Some(holder.socket_ino) {
        let _ = std::fs::remove_file(&holder.path);
    }
    tracing::info!(held = holder.held.len(), "fd store holder exits");
    Ok(())
}

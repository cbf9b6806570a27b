//! The fd store protocol between a holder (in a thread here) and daemons (clients), with
//! pipes standing in for `/dev/fuse` fds: a pipe's read end polls `POLLHUP` once its
//! write end is closed, as a FUSE fd polls `POLLERR` once its connection ended.

use std::io::{Read, Write};
use std::thread::JoinHandle;

use super::*;

fn holder(path: &Path) -> JoinHandle<Result<(), FdStoreError>> {
    let p = path.to_path_buf();
    let t = std::thread::spawn(move || serve_holder(&p, None));
    let end = Instant::now() + Duration::from_secs(5);
    while connect(path).is_err() {
        assert!(Instant::now() < end, "holder did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    t
}

fn meta(mp: &str) -> HeldMeta {
    HeldMeta {
        mountpoint: PathBuf::from(mp),
        dev: 42,
        layer: "sha256:ab".into(),
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}

fn wait_held(store: &FdStore, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (held, _) = store.ping().unwrap();
        if held == n {
            return;
        }
        assert!(Instant::now() < end, "holder holds {held}, want {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_daemon_receives_the_fds_the_previous_one_put() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r1, mut w1) = pipe();
    let (r2, mut w2) = pipe();
    {
        let a = FdStore::open(&sock, None).unwrap();
        assert!(a.take_inherited(Path::new("/m/1")).is_none());
        a.put(meta("/m/1"), r1.as_fd()).unwrap();
        a.put(meta("/m/2"), r2.as_fd()).unwrap();
        // Replacing an entry keeps one fd per mountpoint.
        a.put(meta("/m/2"), r2.as_fd()).unwrap();
        assert_eq!(a.ping().unwrap().0, 2);
        // `a` dies without a word (its connection closes).
    }
    drop((r1, r2));
    let b = FdStore::open(&sock, None).unwrap();
    let h1 = b
        .take_inherited(Path::new("/m/1"))
        .expect("held fd of /m/1");
    assert_eq!(h1.meta, meta("/m/1"));
    assert!(
        b.take_inherited(Path::new("/m/1")).is_none(),
        "handed out once"
    );
    // The fd is the same pipe: what is written to it arrives on the inherited dup.
    w1.write_all(b"kept").unwrap();
    let mut got = [0u8; 4];
    std::fs::File::from(h1.fd).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"kept");

    // Unclaimed fds are dropped by the holder.
    assert_eq!(b.release_unclaimed(), 1);
    wait_held(&b, 1);
    b.remove(Path::new("/m/1")).unwrap();
    wait_held(&b, 0);
    w2.write_all(b"x").unwrap_err(); // every read end is closed now: EPIPE
    b.shutdown().unwrap();
    t.join().unwrap().unwrap();
    assert!(!sock.exists(), "socket removed at exit");
}

#[test]
fn the_holder_drops_fds_whose_connection_ended_and_exits_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r, w) = pipe();
    let a = FdStore::open(&sock, None).unwrap();
    a.put(meta("/m/1"), r.as_fd()).unwrap();
    drop(r);
    wait_held(&a, 1);
    drop(w); // the "connection" ends
    wait_held(&a, 0);
    drop(a); // nothing held, no daemon: the holder exits by itself
    t.join().unwrap().unwrap();
    assert!(!sock.exists());
}

#[test]
fn a_lost_holder_is_replaced_and_given_every_fd_again() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r1, _w1) = pipe();
    let (r2, _w2) = pipe();
    let a = FdStore::open(&sock, None).unwrap();
    a.put(meta("/m/1"), r1.as_fd()).unwrap();
    // Another client shuts the holder down (stands in for it being killed).
    let other = connect(&sock).unwrap();
    assert!(matches!(
        exchange(other.as_fd(), &Request::Shutdown, None, &sock).unwrap(),
        Reply::Done { held: 0, .. }
    ));
    t.join().unwrap().unwrap();
    let t2 = holder(&sock);
    a.put(meta("/m/2"), r2.as_fd()).unwrap();
    let b = FdStore::open(&sock, None).unwrap();
    assert!(b.take_inherited(Path::new("/m/1")).is_some());
    assert!(b.take_inherited(Path::new("/m/2")).is_some());
    b.shutdown().unwrap();
    t2.join().unwrap().unwrap();
}

#[test]
fn bad_requests_are_refused_and_the_holder_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let a = FdStore::open(&sock, None).unwrap();
    // Not JSON.
    let raw = connect(&sock).unwrap();
    socket::send(raw.as_raw_fd(), b"\x00garbage", MsgFlags::empty()).unwrap();
    match recv_msg::<Reply>(raw.as_fd()).unwrap() {
        Received::Message(Reply::Error { message }, None) => assert!(!message.is_empty()),
        _ => panic!("no error reply"),
    }
    // A put without an fd.
    let r = exchange(raw.as_fd(), &Request::Put(meta("/m/1")), None, &sock);
    assert!(r.is_err(), "connection closed after garbage: {r:?}");
    let raw = connect(&sock).unwrap();
    match exchange(raw.as_fd(), &Request::Put(meta("/m/1")), None, &sock).unwrap() {
        Reply::Error { message } => assert!(message.contains("without an fd"), "{message}"),
        r => panic!("{r:?}"),
    }
    // Too large.
    let big = vec![b'x'; MAX_MESSAGE + 10];
    socket::send(raw.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
    assert!(matches!(
        recv_msg::<Reply>(raw.as_fd()).unwrap(),
        Received::Message(Reply::Error { .. }, None)
    ));
    assert_eq!(a.ping().unwrap().0, 0);
    a.shutdown().unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn messages_round_trip_as_json() {
    let m = Request::Put(meta("/r/snapshots/3/fs"));
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains("\"op\":\"put\""), "{text}");
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), m);
    let r: Reply = serde_json::from_str(r#"{"reply":"done","held":3,"pid":7}"#).unwrap();
    assert_eq!(r, Reply::Done { held: 3, pid: 7 });
}

#[test]
fn a_socket_path_too_long_is_named() {
    let long = PathBuf::from(format!("/tmp/{}/fdstore.sock", "d".repeat(200)));
    match FdStore::open(&long, None) {
        Err(FdStoreError::PathTooLong(p)) => assert_eq!(p, long),
        r => panic!("{r:?}"),
    }
}

#[test]
fn without_a_holder_and_without_a_command_open_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let e = FdStore::open(&sock, None).unwrap_err();
    assert!(e.to_string().contains("fdstore.sock"), "{e}");
}

#[test]
fn a_holder_left_fds_by_a_stopping_daemon_keeps_them_past_the_idle_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r, mut w) = pipe();
    {
        let a = FdStore::open(&sock, None).unwrap();
        a.put(meta("/m/1"), r.as_fd()).unwrap();
        assert!(a.holds(Path::new("/m/1")));
        assert!(!a.holds(Path::new("/m/2")));
        assert_eq!(a.keep(None).unwrap(), 1);
        // `a` exits (its connection closes).
    }
    drop(r);
    // Longer than the idle rule (2 s with nothing held): held fds are not idle.
    std::thread::sleep(IDLE_EXIT + Duration::from_secs(1));
    assert!(!t.is_finished(), "the holder exited while holding fds");
    let b = FdStore::open(&sock, None).unwrap();
    let h = b.take_inherited(Path::new("/m/1")).expect("kept fd");
    w.write_all(b"still").unwrap();
    let mut got = [0u8; 5];
    std::fs::File::from(h.fd).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
    b.shutdown().unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn a_holder_without_a_daemon_gives_up_after_the_restart_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r, mut w) = pipe();
    {
        let a = FdStore::open(&sock, None).unwrap();
        a.put(meta("/m/1"), r.as_fd()).unwrap();
        assert_eq!(a.keep(Some(Duration::from_secs(1))).unwrap(), 1);
    }
    drop(r);
    // It gives up (closes the fd: the pipe has no reader left) and exits by itself.
    let end = Instant::now() + Duration::from_secs(60);
    while !t.is_finished() {
        assert!(Instant::now() < end, "the holder never gave up");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.join().unwrap().unwrap();
    assert!(!sock.exists(), "socket removed at exit");
    assert_eq!(
        w.write_all(b"x").unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
}

#[test]
fn release_is_refused_while_a_daemon_is_connected_then_gives_up() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = socket_path(tmp.path());
    let t = holder(&sock);
    let (r, mut w) = pipe();
    let a = FdStore::open(&sock, None).unwrap();
    a.put(meta("/m/1"), r.as_fd()).unwrap();
    drop(r);
    match release(&sock) {
        Err(FdStoreError::Refused(m)) => assert!(m.contains("daemon is connected"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.ping().unwrap().0, 1, "a refused release changes nothing");
    drop(a);
    assert_eq!(release(&sock).unwrap(), 1);
    t.join().unwrap().unwrap();
    assert_eq!(
        w.write_all(b"x").unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
    assert!(release(&sock).is_err(), "no holder any more");
}

#[test]
fn keep_and_release_round_trip_as_json() {
    let k = Request::Keep {
        restart_grace_ms: 600_000,
    };
    let text = serde_json::to_string(&k).unwrap();
    assert_eq!(text, r#"{"op":"keep","restart_grace_ms":600000}"#);
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), k);
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"op":"release"}"#).unwrap(),
        Request::Release
    );
}

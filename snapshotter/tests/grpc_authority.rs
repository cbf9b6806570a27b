//! The snapshots socket answers gRPC clients whatever they send as `:authority`: a raw
//! HTTP/2 client sends the socket path (as older grpc-go and grpc-java do) and a
//! percent-encoded path (gRPC C core); the bare tonic/h2 server resets those streams with
//! PROTOCOL_ERROR (reproduced here), the daemon's server answers them. No root needed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic::transport::Server;
use snapshotter::server::{self, Socket};
use snapshotter::service::Service;
use snapshotter::{Options, Snapshots};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[kind, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A gRPC message of a `StatSnapshotRequest{snapshotter: "starling", key}`.
fn stat_request(key: &str) -> Vec<u8> {
    let mut msg = vec![0x0a, 8];
    msg.extend_from_slice(b"starling");
    msg.push(0x12);
    msg.push(key.len() as u8);
    msg.extend_from_slice(key.as_bytes());
    let mut v = vec![0];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend(msg);
    v
}

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Trailers (or trailers-only headers) with these fields.
    Headers(Vec<(String, String)>),
    /// RST_STREAM with this error code.
    Reset(u32),
}

/// Sends one Stat per authority on one connection (the encoder indexes `:authority`, so
/// later requests refer to the dynamic table, as grpc-go does) and returns how each
/// stream ended.
async fn stat_with_authorities(socket: &Path, authorities: &[&str]) -> Vec<End> {
    let mut conn = UnixStream::connect(socket).await.unwrap();
    let mut enc = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for (i, authority) in authorities.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let fields: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (
                b":path",
                b"/containerd.services.snapshots.v1.Snapshots/Stat",
            ),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = enc.encode(fields);
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        let key = format!("default/missing-{i}");
        out.extend(frame(DATA, END_STREAM, stream, &stat_request(&key)));
    }
    conn.write_all(&out).await.unwrap();

    let mut dec = loona_hpack::Decoder::new();
    let mut ends: Vec<Option<End>> = authorities.iter().map(|_| None).collect();
    let read = async {
        while ends.iter().any(Option::is_none) {
            let mut head = [0u8; 9];
            conn.read_exact(&mut head).await.unwrap();
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await.unwrap();
            let slot = (stream as usize).checked_sub(1).map(|s| s / 2);
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    conn.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
                }
                GOAWAY => panic!("server sent GOAWAY: {payload:?}"),
                RST_STREAM => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    ends[slot.unwrap()] = Some(End::Reset(code));
                }
                HEADERS => {
                    let fields = dec.decode(&payload).unwrap();
                    if flags & END_STREAM != 0 {
                        let fields = fields
                            .into_iter()
                            .map(|(k, v)| {
                                (
                                    String::from_utf8(k).unwrap(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                )
                            })
                            .collect();
                        ends[slot.unwrap()] = Some(End::Headers(fields));
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server answered every stream");
    ends.into_iter().map(Option::unwrap).collect()
}

fn grpc_status(end: &End) -> Option<(String, String)> {
    let End::Headers(fields) = end else {
        return None;
    };
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Some((get("grpc-status"), get("grpc-message")))
}

const AUTHORITIES: [&str; 4] = [
    "/run/starling/starling.sock",
    "/run/starling/starling.sock",
    "%2Frun%2Fstarling%2Fstarling.sock",
    "localhost",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_authority_reaches_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let core = Arc::new(Snapshots::open(tmp.path().join("root"), Options::default()).unwrap());
    let path = tmp.path().join("s.sock");
    let socket = Socket::bind(&path).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(core, socket, async move {
        let _ = stop_rx.await;
    }));

    let ends = stat_with_authorities(&path, &AUTHORITIES).await;
    for (i, end) in ends.iter().enumerate() {
        let (status, message) =
            grpc_status(end).unwrap_or_else(|| panic!("{}: {end:?}", AUTHORITIES[i]));
        assert_eq!(status, "5", "NotFound for {}: {end:?}", AUTHORITIES[i]);
        assert!(
            message.contains(&format!("missing-{i}")),
            "the service saw the request: {message}"
        );
    }
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

/// The reproduction: the same requests against tonic's server on a plain unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_h2_server_resets_socket_path_authorities() {
    let tmp = tempfile::tempdir().unwrap();
    let core = Arc::new(Snapshots::open(tmp.path().join("root"), Options::default()).unwrap());
    let path = tmp.path().join("bare.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        Server::builder()
            .add_service(containerd_snapshots::server(Arc::new(Service::new(core))))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move {
                    let _ = stop_rx.await;
                },
            ),
    );
    let ends = stat_with_authorities(&path, &AUTHORITIES).await;
    assert_eq!(ends[0], End::Reset(PROTOCOL_ERROR));
    assert_eq!(ends[1], End::Reset(PROTOCOL_ERROR));
    assert_eq!(ends[2], End::Reset(PROTOCOL_ERROR));
    assert_eq!(
        grpc_status(&ends[3]).map(|s| s.0).as_deref(),
        Some("5"),
        "{:?}",
        ends[3]
    );
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

//! Connections of the snapshots socket that accept any HTTP/2 `:authority`.
//!
//! gRPC clients on a unix socket put all sorts of things in `:authority`: older grpc-go
//! and grpc-java send the socket path (`/run/starling/starling.sock`), newer gRPC C core
//! sends it percent-encoded. The HTTP/2 server under tonic (h2) parses `:authority` as a
//! URI authority and resets such a stream with `PROTOCOL_ERROR` before any service sees
//! it, and no server setting turns that off. [`AnyAuthority`] sits between the socket
//! and the server: it reads the client's frames, decodes each header block (HPACK keeps
//! per-connection state, so every block is decoded in order) and, when a block carries
//! an `:authority` that is not a valid URI authority, replaces it with `localhost`. The
//! authority means nothing on a unix socket.
//!
//! A connection whose authorities are all valid passes byte for byte. From the first
//! rewritten block on, every later block of the connection is re-encoded with literals
//! only (no dynamic-table references), because the server's HPACK table no longer
//! matches the client's. Anything the wrapper cannot follow (no HTTP/2 preface, an
//! undecodable block, an oversized block) switches the connection to plain pass-through,
//! so the server answers it exactly as it would without the wrapper.
//! Frames from the server to the client are never touched.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use containerd_snapshots::tonic::codegen::http::uri::Authority;
use containerd_snapshots::tonic::transport::server::Connected;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What replaces an `:authority` the server would refuse.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE default).
const MAX_FRAME: usize = 16_384;
/// Largest header block followed; a larger one switches the connection to pass-through.
const MAX_BLOCK: usize = 1 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// A server-side connection that rewrites unusable `:authority` values (see the module
/// docs). Writes go to the socket unchanged.
pub struct AnyAuthority<S> {
    io: S,
    inbound: Inbound,
}

impl<S> AnyAuthority<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(io: S) -> Self {
        AnyAuthority {
            io,
            inbound: Inbound::default(),
        }
    }

    /// How many header blocks had their `:authority` replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.inbound.rewritten
    }
}

impl<S: Connected> Connected for AnyAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.inbound.out.is_empty() {
                let n = this.inbound.out.len().min(buf.remaining());
                buf.put_slice(&this.inbound.out[..n]);
                this.inbound.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.inbound.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.inbound.finish();
            } else {
                this.inbound.feed(rb.filled());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where the client's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// In the connection preface (bytes of it seen so far).
    Preface(usize),
    /// At a frame header.
    Frame,
    /// Inside a frame that passes unchanged (payload bytes left).
    Payload(usize),
    /// Not following the protocol: everything passes unchanged.
    Transparent,
}

/// A header block being collected: HEADERS and its CONTINUATION frames.
struct Block {
    /// The frames as received (sent on unchanged when nothing is rewritten).
    raw: BytesMut,
    /// The header block fragments, padding and priority fields removed.
    fragment: BytesMut,
    stream: u32,
    /// Flags of the HEADERS frame.
    flags: u8,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; 5]>,
}

/// The client-to-server direction: bytes in, (possibly rewritten) bytes out.
struct Inbound {
    stage: Stage,
    /// Received, not yet processed.
    raw: BytesMut,
    /// Ready for the server.
    out: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// A block was rewritten: every later block is re-encoded.
    reencode: bool,
    rewritten: u64,
    eof: bool,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            stage: Stage::Preface(0),
            raw: BytesMut::new(),
            out: BytesMut::new(),
            block: None,
            decoder: loona_hpack::Decoder::new(),
            reencode: false,
            rewritten: 0,
            eof: false,
        }
    }
}

impl Inbound {
    /// Takes bytes read from the client.
    fn feed(&mut self, data: &[u8]) {
        self.raw.extend_from_slice(data);
        self.process();
    }

    /// The client closed its side: whatever is held goes on as it is.
    fn finish(&mut self) {
        if let Some(b) = self.block.take() {
            self.out.extend_from_slice(&b.raw);
        }
        let rest = self.raw.split();
        self.out.extend_from_slice(&rest);
        self.eof = true;
    }

    fn transparent(&mut self) {
        if let Some(b) = self.block.take() {
            self.out.extend_from_slice(&b.raw);
        }
        self.stage = Stage::Transparent;
    }

    fn process(&mut self) {
        loop {
            match self.stage {
                Stage::Transparent => {
                    let rest = self.raw.split();
                    self.out.extend_from_slice(&rest);
                    return;
                }
                Stage::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(self.raw.len());
                    if n == 0 {
                        return;
                    }
                    let part = self.raw.split_to(n);
                    let matches = part[..] == PREFACE[seen..seen + n];
                    self.out.extend_from_slice(&part);
                    self.stage = if !matches {
                        Stage::Transparent
                    } else if seen + n == PREFACE.len() {
                        Stage::Frame
                    } else {
                        Stage::Preface(seen + n)
                    };
                }
                Stage::Payload(left) => {
                    let n = left.min(self.raw.len());
                    if n == 0 {
                        return;
                    }
                    let part = self.raw.split_to(n);
                    self.out.extend_from_slice(&part);
                    self.stage = if left == n {
                        Stage::Frame
                    } else {
                        Stage::Payload(left - n)
                    };
                }
                Stage::Frame => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let len = (usize::from(self.raw[0]) << 16)
                        | (usize::from(self.raw[1]) << 8)
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    let in_block = self.block.is_some();
                    if kind != HEADERS && kind != CONTINUATION && !in_block {
                        let header = self.raw.split_to(FRAME_HEADER);
                        self.out.extend_from_slice(&header);
                        if len > 0 {
                            self.stage = Stage::Payload(len);
                        }
                        continue;
                    }
                    let collected = self.block.as_ref().map_or(0, |b| b.raw.len());
                    if len > MAX_BLOCK || collected + len > MAX_BLOCK {
                        self.transparent();
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    if !self.header_frame(frame) {
                        self.transparent();
                    }
                }
            }
        }
    }

    /// Takes one whole frame while a header block is open or starting. False when the
    /// frames do not form a header block the wrapper can follow (the frame is then held in
    /// the block's raw bytes or already passed on, and the connection goes transparent).
    fn header_frame(&mut self, frame: BytesMut) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (&mut self.block, kind) {
            (None, HEADERS) => {
                let Some((fragment, priority)) = headers_fragment(flags, payload) else {
                    self.out.extend_from_slice(&frame);
                    return false;
                };
                let fragment = BytesMut::from(fragment);
                self.block = Some(Block {
                    raw: frame.clone(),
                    fragment,
                    stream,
                    flags,
                    priority,
                });
            }
            (Some(b), CONTINUATION) if b.stream == stream => {
                b.raw.extend_from_slice(&frame);
                b.fragment.extend_from_slice(payload);
            }
            (block, _) => {
                // A CONTINUATION out of place, or another frame inside a block: a protocol
                // error the server reports itself.
                if let Some(b) = block.take() {
                    self.out.extend_from_slice(&b.raw);
                }
                self.out.extend_from_slice(&frame);
                return false;
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("a block is open");
            return self.end_block(block);
        }
        true
    }

    /// Decodes a complete block and passes it on, rewritten if needed.
    fn end_block(&mut self, block: Block) -> bool {
        let decoded = catch_unwind(AssertUnwindSafe(|| self.decoder.decode(&block.fragment)));
        let Ok(Ok(mut fields)) = decoded else {
            self.out.extend_from_slice(&block.raw);
            return false;
        };
        let mut fixed = false;
        for (name, value) in fields.iter_mut() {
            if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                *value = REPLACEMENT.to_vec();
                fixed = true;
            }
        }
        if fixed {
            self.rewritten += 1;
            if !self.reencode {
                tracing::debug!(
                    "a client sent an :authority that is not a URI authority; replacing it"
                );
            }
            self.reencode = true;
        }
        if !self.reencode {
            self.out.extend_from_slice(&block.raw);
            return true;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(&mut encoded, name, value);
        }
        self.put_block(&block, &encoded);
        true
    }

    /// Writes `encoded` as a HEADERS frame (with the block's END_STREAM and priority) and
    /// as many CONTINUATION frames as needed.
    fn put_block(&mut self, block: &Block, encoded: &[u8]) {
        let mut first = Vec::with_capacity(5 + encoded.len().min(MAX_FRAME));
        let mut flags = block.flags & END_STREAM;
        if let Some(p) = block.priority {
            first.extend_from_slice(&p);
            flags |= PRIORITY;
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.put_frame(HEADERS, flags, block.stream, &first);
        while !rest.is_empty() {
            let (part, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.put_frame(CONTINUATION, flags, block.stream, part);
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.out.put_slice(&len.to_be_bytes()[1..]);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream & 0x7fff_ffff);
        self.out.put_slice(payload);
    }
}

/// The header block fragment and priority fields of a HEADERS frame's payload, padding
/// removed; `None` when the padding or priority fields do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(<[u8; 5]>::try_from(p.get(..5)?).ok()?);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((&p[..end], priority))
}

/// A "literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        // Writing into a Vec cannot fail.
        let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client-side frame.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        v.extend_from_slice(&[kind, flags]);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn request_headers(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/containerd.services.snapshots.v1.Snapshots/Stat"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Splits the server-bound byte stream into frames (after the preface).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(b.starts_with(PREFACE));
        b = &b[PREFACE.len()..];
        let mut v = Vec::new();
        while !b.is_empty() {
            let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    /// Feeds `input` in pieces of `step` bytes.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, u64) {
        let mut i = Inbound::default();
        for piece in input.chunks(step) {
            i.feed(piece);
        }
        i.finish();
        (i.out.to_vec(), i.rewritten)
    }

    #[test]
    fn valid_authorities_pass_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1, 3] {
            let h = request_headers("localhost");
            let block = enc.encode(h.iter().map(|(k, v)| (&k[..], &v[..])));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        for step in [1, 7, 4096] {
            let (out, rewritten) = run(&input, step);
            assert_eq!(out, input, "step {step}");
            assert_eq!(rewritten, 0);
        }
    }

    #[test]
    fn socket_path_authorities_are_replaced_also_when_indexed() {
        // Like grpc-go: the first request adds `:authority` to the dynamic table, the
        // second refers to it by index.
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        for stream in [1u32, 3] {
            let h = request_headers("/run/starling/starling.sock");
            let block = enc.encode(h.iter().map(|(k, v)| (&k[..], &v[..])));
            // Padding and priority on the first, a CONTINUATION split on the second.
            if stream == 1 {
                let mut p = vec![3u8];
                p.extend_from_slice(&[0, 0, 0, 0, 15]);
                p.extend_from_slice(&block);
                p.extend_from_slice(&[0, 0, 0]);
                input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, stream, &p));
            } else {
                let (a, b) = block.split_at(block.len() / 2);
                input.extend(frame(HEADERS, END_STREAM, stream, a));
                input.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            }
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        for step in [1, 5, 4096] {
            let (out, rewritten) = run(&input, step);
            assert_eq!(rewritten, 2, "step {step}");
            let f = frames(&out);
            let kinds: Vec<u8> = f.iter().map(|x| x.0).collect();
            assert_eq!(kinds, [0x4, HEADERS, 0x0, HEADERS, 0x0], "step {step}");
            let mut dec = loona_hpack::Decoder::new();
            for (idx, stream) in [(1usize, 1u32), (3, 3)] {
                let (_, flags, s, payload) = &f[idx];
                assert_eq!(*s, stream);
                assert!(flags & END_HEADERS != 0);
                assert_eq!(flags & PADDED, 0, "padding removed");
                let block = if flags & PRIORITY != 0 {
                    assert_eq!(&payload[..5], &[0, 0, 0, 0, 15], "priority kept");
                    &payload[5..]
                } else {
                    &payload[..]
                };
                assert_eq!(stream == 3, flags & END_STREAM != 0, "END_STREAM kept");
                let got = dec.decode(block).unwrap();
                assert_eq!(got, request_headers("localhost"));
            }
        }
    }

    #[test]
    fn what_cannot_be_followed_passes_unchanged() {
        // Not HTTP/2 at all.
        let (out, _) = run(b"GET / HTTP/1.1\r\n\r\n", 3);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        // An undecodable block (index 200 of an empty dynamic table).
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x80 | 0x7f, 0x49]));
        input.extend(frame(0x0, END_STREAM, 1, b"x"));
        let (out, rewritten) = run(&input, 2);
        assert_eq!(out, input);
        assert_eq!(rewritten, 0);
        // A truncated frame at the end of the stream.
        let mut input = PREFACE.to_vec();
        input.extend(&frame(HEADERS, END_HEADERS, 1, &[1, 2, 3])[..10]);
        let (out, _) = run(&input, 4);
        assert_eq!(out, input);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let mut h = request_headers("/s.sock");
        h.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block = enc.encode(h.iter().map(|(k, v)| (&k[..], &v[..])));
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(10_000);
        input.extend(frame(HEADERS, 0, 5, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let (out, rewritten) = run(&input, 999);
        assert_eq!(rewritten, 1);
        let f = frames(&out);
        assert!(f.len() >= 3, "{} frames", f.len());
        assert_eq!(f[0].0, HEADERS);
        assert!(f[1..].iter().all(|x| x.0 == CONTINUATION && x.2 == 5));
        assert!(f.iter().all(|x| x.3.len() <= MAX_FRAME));
        assert!(f.last().unwrap().1 & END_HEADERS != 0);
        let all: Vec<u8> = f.iter().flat_map(|x| x.3.clone()).collect();
        let mut want = request_headers("localhost");
        want.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        assert_eq!(loona_hpack::Decoder::new().decode(&all).unwrap(), want);
    }
}

//! Calls forwarded byte for byte: a gRPC codec whose messages are the encoded bytes
//! ([`RawCodec`]), so fields this build's CRI API does not know (a newer kubelet's) reach
//! containerd unchanged, and a unary call to any method of a service is sent on to the
//! same path ([`forward`]).

use bytes::{Buf as _, BufMut as _, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Messages as their encoded bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends the unary call `request` on to `path` of `channel`'s server; metadata (the
/// deadline among it) goes along, tonic dropping the reserved headers.
pub async fn forward(
    channel: Channel,
    path: PathAndQuery,
    request: Request<Bytes>,
    max_message: usize,
) -> Result<Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("containerd's CRI endpoint is not ready: {e}")))?;
    let (metadata, _, message) = request.into_parts();
    grpc.unary(
        Request::from_parts(metadata, Default::default(), message),
        path,
        RawCodec,
    )
    .await
}

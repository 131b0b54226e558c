//! The protobuf codec of the broker's own services: prost's, except that a request body that is
//! not a valid message (bad UTF-8 in a string, a truncated field, a wrong wire type, garbage) is
//! the caller's INVALID_ARGUMENT rather than prost's INTERNAL. Clients keep prost's codec, where a
//! malformed answer is the broker's fault.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// What a caller hears about a body that does not decode; the decoder's own words would echo
/// the caller's field names and could grow with what it sent.
pub const MALFORMED: &str =
    "malformed message: the body is not a valid protobuf encoding of the request";

/// The server-side codec: prost's encoder, and a decoder that blames the caller.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a request message; a failure is INVALID_ARGUMENT with a fixed message.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        match U::decode(buf) {
            Ok(message) => Ok(Some(message)),
            Err(err) => {
                tracing::debug!(error = %err, "request body does not decode");
                Err(Status::invalid_argument(MALFORMED))
            }
        }
    }
}

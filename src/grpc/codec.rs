//! The gRPC codec of the generated services: prost's, except that a request
//! body that is not a valid protobuf message gets `INVALID_ARGUMENT` — bad
//! input, the sender's fault, never going to succeed on a retry — instead of
//! tonic's default `INTERNAL`, which tells a caller to retry a poison message.
//! The message names the expected type and what prost found wrong.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Selected in build.rs with `codec_path`.
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstDecoder::default())
    }
}

pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|status| malformed::<U>(status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Decodes a request body exactly as the server does (what the fuzzers call).
pub fn decode_request<U: Message + Default>(body: &[u8]) -> Result<U, Status> {
    U::decode(body).map_err(|e| malformed::<U>(&e.to_string()))
}

fn malformed<U>(why: &str) -> Status {
    let why = why
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(why);
    let name = std::any::type_name::<U>();
    let name = name.rsplit("::").next().unwrap_or(name);
    Status::invalid_argument(format!(
        "the request body is not a valid {name} message: {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::social::statistic::v1::StatItemUpdated;

    #[test]
    fn a_truncated_body_is_invalid_argument_naming_the_type() {
        let msg = StatItemUpdated {
            user_id: "u".into(),
            ..Default::default()
        };
        let body = msg.encode_to_vec();
        assert_eq!(decode_request::<StatItemUpdated>(&body).unwrap(), msg);
        let status = decode_request::<StatItemUpdated>(&body[..body.len() - 1]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("the request body is not a valid StatItemUpdated message: "),
            "{status:?}"
        );
    }
}

//! The protobuf codec of the directory's and the admin API's gRPC services (client and server
//! code generated in this crate): tonic-prost's codec, except that a message that does not
//! decode is INVALID_ARGUMENT instead of INTERNAL.
//!
//! Why: the protocol answers a malformed request with INVALID_ARGUMENT (`proto/directory.proto`,
//! "Errors"); INTERNAL says the directory failed, which sends operators looking for a bug that is
//! the caller's. tonic-prost maps every decode error to INTERNAL (gRPC's guidance for a response
//! a client cannot parse). On the client side the mapping changes only the code of an error that
//! is already fatal to the call.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode errors as INVALID_ARGUMENT (see the module doc). `build.rs` names
/// it as the codec of every generated method.
#[derive(Debug, Clone, Default)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] whose errors (all of them protobuf decode errors) are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!("the message is not valid protobuf: {}", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

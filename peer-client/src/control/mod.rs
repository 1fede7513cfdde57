//! The node's local control API (`proto/control.proto`): gRPC over the Unix socket
//! `control.sock` in the data dir. The daemon binds and serves it ([`bind`], [`serve`]); the CLI calls it
//! ([`connect`]).
//!
//! Handlers are thin: decode and check the request, call the [`Node`], encode the answer.
//! The socket is created with mode 0600: only the node's own user may drive it.
//!
//! Must never: listen on a network address, or do work of its own that the node does not do.

mod progress;
mod server;

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use server::{ControlError, bind, serve};

/// Generated code for `proto/control.proto` (package `quaver.control.v1`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/quaver.control.v1.rs"));
}

pub type ControlClient = pb::control_client::ControlClient<Channel>;

/// Connects to the control socket at `socket`. Fails at once if no node listens there.
pub async fn connect(socket: &Path) -> Result<ControlClient, tonic::transport::Error> {
    let socket = socket.to_owned();
    // The URI is a placeholder that tonic requires; the connector ignores it and dials the
    // Unix socket.
    let channel =
        Endpoint::from_static("http://quaver.control")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await?;
    Ok(pb::control_client::ControlClient::new(channel))
}

//! The node's questions to the directory: search, a file's metadata, who has a file.
//!
//! One lazily connected gRPC channel that reconnects by itself; every call is bounded by a
//! timeout, so a directory that hangs costs a clear error, never a stuck command. What the
//! directory answers is data to check, not to trust: addresses and ids are parsed here, and a
//! malformed source is skipped with a log line, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::{
    FileInfo, GetFileRequest, LocateRequest, Reach, SearchHit, SearchRequest,
};
use quaver_shared::{ContentId, PeerId};
use tonic::transport::Channel;

use super::NodeError;
use crate::fetch::download::{Route, SourceAddr};
use quaver_shared::directory_endpoint::directory_endpoint;

/// Longest wait for one directory call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Sources asked for per Locate (the download uses at most 8 at once; the rest are spares).
const LOCATE_SOURCES: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Says what failed, where, and what to check ([`unreachable_advice`]).
    #[error("the directory at {url} cannot be reached ({reason}); {}", unreachable_advice(.url))]
    Unavailable { url: String, reason: String },
    #[error("the directory does not know this file")]
    NotFound,
    #[error("the directory refused: {0}")]
    Refused(tonic::Status),
}

/// What to check when the directory at `url` does not answer, for error messages and status.
pub fn unreachable_advice(url: &str) -> String {
    let tls = if url.starts_with("https://") {
        ", and that its certificate verifies (against --directory-ca / QUAVER_DIRECTORY_CA if it is not signed by a public CA)"
    } else {
        ""
    };
    format!(
        "check that the directory is running and listening at {url}, and that this is its URL \
         (the daemon's --directory flag or QUAVER_DIRECTORY){tls}"
    )
}

impl LookupError {
    /// `status` of a call to the directory at `url`, classified.
    fn from_status(url: &str, status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::NotFound => LookupError::NotFound,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                // A connection failure's message is generic ("tcp connect error"); the reason
                // (refused, no route, bad certificate) is in its sources.
                let source = std::error::Error::source(&status);
                let reason = quaver_shared::report::with_causes(status.message().to_owned(), source);
                LookupError::Unavailable { url: url.to_owned(), reason }
            }
            _ => LookupError::Refused(status),
        }
    }
}

/// A reconnecting channel to the directory.
#[derive(Clone)]
pub struct DirectoryLink {
    client: DirectoryClient<Channel>,
    url: String,
}

impl DirectoryLink {
    /// A link to the directory at `url`; an `https://` one is verified against `ca` (PEM) or
    /// the system roots.
    pub fn new(url: &str, ca: Option<&std::path::Path>) -> Result<Self, NodeError> {
        let endpoint = directory_endpoint(url, ca)
            .map_err(|e| NodeError::DirectoryUrl { url: url.to_owned(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        Ok(Self { client: DirectoryClient::new(endpoint.connect_lazy()), url: url.to_owned() })
    }

    fn failed(&self) -> impl Fn(tonic::Status) -> LookupError + '_ {
        |status| LookupError::from_status(&self.url, status)
    }

    pub async fn search(&self, request: SearchRequest) -> Result<Vec<SearchHit>, LookupError> {
        Ok(self.client.clone().search(request).await.map_err(self.failed())?.into_inner().hits)
    }

    /// The catalog entry of `id`.
    pub async fn file(&self, id: ContentId) -> Result<FileInfo, LookupError> {
        let request = GetFileRequest { content_id: id.to_vec() };
        let resp = self.client.clone().get_file(request).await.map_err(self.failed())?;
        resp.into_inner().file.ok_or(LookupError::NotFound)
    }

    /// Online sources of `id`, best first, without `me`.
    pub async fn locate(&self, id: ContentId, me: PeerId) -> Result<Vec<SourceAddr>, LookupError> {
        let request =
            LocateRequest { content_id: id.to_vec(), max_sources: LOCATE_SOURCES, peer_id: me.to_vec() };
        let sources = self.client.clone().locate(request).await.map_err(self.failed())?.into_inner().sources;
        Ok(sources
            .into_iter()
            .filter_map(|s| {
                let peer = PeerId::from_slice(&s.peer_id).ok()?;
                match s.address.parse::<SocketAddr>() {
                    Ok(addr) if peer != me => {
                        let path = match Reach::try_from(s.reach) {
                            Ok(Reach::Introduction) => Route::Punched,
                            Ok(Reach::Relay) => Route::Relayed,
                            _ => Route::Direct,
                        };
                        Some(SourceAddr { peer, addr, path })
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(address = %s.address, error = %e, "directory sent a malformed source address");
                        None
                    }
                }
            })
            .collect())
    }
}

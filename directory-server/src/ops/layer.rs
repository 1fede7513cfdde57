//! The tower layer around every gRPC service: admits each request against the per-IP limits
//! (rate, requests in progress), then times it, counts it by method and status code and logs
//! it at debug with the client's address. A refused request is answered RESOURCE_EXHAUSTED
//! right here, before any service code runs.
//!
//! The status comes from the response headers: tonic sends a failed unary call as a
//! trailers-only response whose headers carry `grpc-status`; a response without it is a
//! success. A call cut off before it answers (client gone, tonic's timeout) is recorded as
//! CANCELLED when its future is dropped. For a streaming call (Admin/Backup, health Watch,
//! Directory/KeepAlive) the duration ends when the response starts, and so does its place among
//! the IP's requests in progress: an open stream holds none. A failure sent later in the
//! trailers is not seen here: KeepAlive counts its beats itself (`Metrics::beat`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::limits::Limits;
use super::metrics::Metrics;

/// Every method the server has; anything else is counted as `unknown`.
const METHODS: &[&str] = &[
    "/quaver.directory.v1.Directory/Challenge",
    "/quaver.directory.v1.Directory/Announce",
    "/quaver.directory.v1.Directory/Publish",
    "/quaver.directory.v1.Directory/Heartbeat",
    "/quaver.directory.v1.Directory/KeepAlive",
    "/quaver.directory.v1.Directory/Withdraw",
    "/quaver.directory.v1.Directory/Search",
    "/quaver.directory.v1.Directory/Locate",
    "/quaver.directory.v1.Directory/GetFile",
    "/quaver.directory.v1.Directory/Stats",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/quaver.admin.v1.Admin/Backup",
    "/quaver.admin.v1.Admin/ListPeers",
    "/quaver.admin.v1.Admin/Ban",
    "/quaver.admin.v1.Admin/Unban",
    "/quaver.admin.v1.Admin/ListBans",
    "/quaver.admin.v1.Admin/RemoveFile",
];

/// The metric label for a request path: a known method without its leading `/`, or `unknown`
/// (so that clients cannot invent label values).
pub fn method_label(path: &str) -> &'static str {
    METHODS.iter().find(|m| **m == path).map_or("unknown", |m| &m[1..])
}

/// The client's address as tonic recorded it for the connection (plain or TLS).
pub fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr).or_else(|| {
        extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr())
    })
}

#[derive(Clone)]
pub struct OpsLayer {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
}

impl OpsLayer {
    pub fn new(limits: Arc<Limits>, metrics: Arc<Metrics>) -> Self {
        Self { limits, metrics }
    }
}

impl<S> Layer<S> for OpsLayer {
    type Service = OpsService<S>;

    fn layer(&self, inner: S) -> OpsService<S> {
        OpsService { inner, limits: self.limits.clone(), metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct OpsService<S> {
    inner: S,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
}

/// Records a request once: with its status when it answered, as CANCELLED if dropped first.
struct Record {
    metrics: Arc<Metrics>,
    method: &'static str,
    peer: Option<SocketAddr>,
    started: Instant,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: Code) {
        self.done = true;
        let elapsed = self.started.elapsed();
        self.metrics.request(self.method, code, elapsed);
        tracing::debug!(
            method = self.method,
            peer = ?self.peer,
            status = ?code,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled);
        }
    }
}

fn response_code<B>(response: &http::Response<B>) -> Code {
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) => status.code(),
        None if response.status().is_success() => Code::Ok,
        None => Code::Unknown,
    }
}

impl<S, B> Service<http::Request<B>> for OpsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the one that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let peer = remote_addr(request.extensions());
        let mut record = Record {
            metrics: self.metrics.clone(),
            method: method_label(request.uri().path()),
            peer,
            started: Instant::now(),
            done: false,
        };
        let admitted = match peer {
            Some(addr) => self.limits.admit_request(addr.ip()),
            None => Ok(None),
        };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let _in_flight = match admitted {
                Ok(guard) => guard,
                Err(refusal) => {
                    metrics.rate_limited(refusal.label());
                    tracing::debug!(peer = ?peer, %refusal, "request refused");
                    record.finish(Code::ResourceExhausted);
                    return Ok(tonic::Status::resource_exhausted(refusal.to_string()).into_http());
                }
            };
            let response = inner.call(request).await?;
            record.finish(response_code(&response));
            Ok(response)
        })
    }
}

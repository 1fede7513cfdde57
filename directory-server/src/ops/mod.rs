//! What an operator needs around the directory's domain: TLS on the gRPC port with certificate
//! reload (`tls`), the accept path with connection limits and concurrent TLS handshakes
//! (`incoming`), abuse limits (`limits`), Prometheus metrics and their HTTP endpoint
//! (`metrics`, `metrics_http`), the per-request tower layer that applies the limits, measures
//! and logs every call (`layer`), and log output (`logging`).
//!
//! Nothing here decides domain policy or touches storage; the one limit that needs the
//! directory's state (online peers per IP) is enforced by `Directory::announce` under its
//! membership lock, with the value from [`LimitsConfig`].

pub mod incoming;
pub mod layer;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod tls;

pub use limits::{Limits, LimitsConfig};
pub use logging::LogFormat;
pub use metrics::Metrics;

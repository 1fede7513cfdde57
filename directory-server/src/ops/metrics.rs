//! The directory's Prometheus metrics, all named `quaver_directory_*` (counters end in
//! `_total`, durations are `_seconds`, sizes `_bytes`). Events are counted where they happen
//! (the request layer, the accept loop, the service, the timers); state (online peers, files,
//! index size) is read from the [`Directory`] when scraped, so it can never drift.
//!
//! Labels are bounded: `method` is one of the known gRPC methods or `unknown`, `code` one of
//! the sixteen gRPC codes, the rest fixed words; nothing a client sends becomes a label.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::limits::Limits;
use crate::directory::Directory;
use crate::rendezvous::Rendezvous;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Every metric the directory exports, behind one registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
    rejected_requests: Family<LimitLabels, Counter>,
    rejected_connections: Family<ReasonLabels, Counter>,
    connect_back: Family<ResultLabels, Counter>,
    tls_reloads: Family<ResultLabels, Counter>,
    index_commits: Histogram,
    indexed_documents: Counter,
    keep_alive_beats: Family<ResultLabels, Counter>,
    banned_announces: Counter,
}

fn request_histogram() -> Histogram {
    // 0.5 ms .. about 16 s: a heartbeat at the low end, a slow connect-back Announce at the top.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// The metrics of one server; `directory` and `limits` are read at scrape time.
    pub fn new(directory: Arc<Directory>, limits: Arc<Limits>, rendezvous: Arc<Rendezvous>) -> Self {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("quaver_directory");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register("grpc_requests", "gRPC requests answered, by method and status code", requests.clone());
        let durations: Durations = Family::new_with_constructor(request_histogram);
        r.register_with_unit(
            "grpc_request_duration",
            "Time from request to response, by method and status code",
            Unit::Seconds,
            durations.clone(),
        );
        let rejected_requests = Family::<LimitLabels, Counter>::default();
        r.register(
            "rate_limited_requests",
            "Requests refused with RESOURCE_EXHAUSTED by an abuse limit, by limit",
            rejected_requests.clone(),
        );
        let rejected_connections = Family::<ReasonLabels, Counter>::default();
        r.register(
            "rejected_connections",
            "Connections closed before serving: over a connection limit or a failed TLS handshake",
            rejected_connections.clone(),
        );
        let connect_back = Family::<ResultLabels, Counter>::default();
        r.register(
            "connect_back_checks",
            "Connect-back checks of announced addresses, by result (reachable or failed)",
            connect_back.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        r.register("tls_reloads", "TLS certificate reloads, by result", tls_reloads.clone());
        let index_commits = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        r.register_with_unit(
            "index_commit_duration",
            "Time of one indexing round (add the batch, commit, reload the reader)",
            Unit::Seconds,
            index_commits.clone(),
        );
        let indexed_documents = Counter::default();
        r.register(
            "indexed_documents",
            "Catalog entries added to the search index",
            indexed_documents.clone(),
        );
        let keep_alive_beats = Family::<ResultLabels, Counter>::default();
        r.register(
            "keep_alive_beats",
            "Beats received on KeepAlive streams, by result (the gRPC code of the answer)",
            keep_alive_beats.clone(),
        );
        let banned_announces = Counter::default();
        r.register(
            "banned_announces",
            "Announces refused with PERMISSION_DENIED because an operator banned the peer or its IP",
            banned_announces.clone(),
        );
        r.register_collector(Box::new(StateCollector { directory, limits, rendezvous }));
        Self {
            registry,
            requests,
            durations,
            rejected_requests,
            rejected_connections,
            connect_back,
            tls_reloads,
            index_commits,
            indexed_documents,
            keep_alive_beats,
            banned_announces,
        }
    }

    pub fn request(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let labels = RequestLabels { method, code: code_name(code) };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// One beat on a KeepAlive stream (its stream is counted as one request by the layer).
    pub fn beat(&self, code: tonic::Code) {
        self.keep_alive_beats.get_or_create(&ResultLabels { result: code_name(code) }).inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rejected_requests.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn banned_announce(&self) {
        self.banned_announces.inc();
    }

    pub fn connection_rejected(&self, reason: &'static str) {
        self.rejected_connections.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn connect_back(&self, reachable: bool) {
        let result = if reachable { "reachable" } else { "failed" };
        self.connect_back.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "failed" } }).inc();
    }

    pub fn index_round(&self, documents: usize, started: Instant) {
        self.index_commits.observe(started.elapsed().as_secs_f64());
        self.indexed_documents.inc_by(documents as u64);
    }

    /// The text exposition (OpenMetrics, which Prometheus reads), state gauges included.
    /// Blocking: it reads the directory's counts.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The gRPC code's name as grpc-go and the gRPC docs spell it (`OK`, `RESOURCE_EXHAUSTED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Reads the directory's state on every scrape.
struct StateCollector {
    directory: Arc<Directory>,
    limits: Arc<Limits>,
    rendezvous: Arc<Rendezvous>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReachLabels {
    reach: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntroductionLabels {
    path: &'static str,
    result: &'static str,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let d = &self.directory;
        let stats = d.stats(Instant::now()).unwrap_or_default();
        let e = &mut encoder;
        gauge(e, "online_peers", "Peers holding a lease", None, stats.online_peers)?;
        gauge(e, "known_peers", "Peers the catalog has ever seen", None, stats.known_peers)?;
        gauge(e, "files", "Distinct files in the catalog", None, stats.files)?;
        gauge(e, "sources", "(file, peer) pairs in the catalog", None, stats.sources)?;
        gauge(e, "index_documents", "Documents in the search index", None, stats.indexed_documents)?;
        let segments = u64::from(stats.index_segments);
        gauge(e, "index_segments", "Segments of the search index (each costs every search)", None, segments)?;
        gauge(
            e,
            "index_size",
            "Bytes of the search index on disk",
            Some(&Unit::Bytes),
            d.index_disk_bytes(),
        )?;
        gauge(
            e,
            "uptime",
            "Seconds since the directory started",
            Some(&Unit::Seconds),
            stats.uptime_seconds,
        )?;
        let expired = ConstCounter::new(d.leases_expired());
        let name = "lease_expiries";
        expired.encode(e.encode_descriptor(
            name,
            "Leases that ran out (peer went silent)",
            None,
            expired.metric_type(),
        )?)?;
        let (sent, dropped, pending) = d.hint_counters();
        for (name, help, n) in [
            ("rarity_hints_sent", "Rarity hints sent to holders in beat answers", sent),
            (
                "rarity_hints_dropped",
                "Rarity hints dropped: a holder's queue, or all of them, was full",
                dropped,
            ),
        ] {
            let c = ConstCounter::new(n);
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        gauge(
            e,
            "rarity_hints_pending",
            "Rarity hints waiting for their holders' next beat",
            None,
            pending as u64,
        )?;
        let open = u64::from(self.limits.open_connections());
        gauge(e, "open_connections", "TCP connections open on the gRPC port", None, open)?;

        let help = "Online peers by how others reach them (their last Announce)";
        let mut peers =
            e.encode_descriptor("peers_by_reach", help, None, prometheus_client::metrics::MetricType::Gauge)?;
        for (reach, n) in [
            ("direct", stats.peers_direct),
            ("introduction", stats.peers_introduced),
            ("relay", stats.peers_relayed),
            ("unreachable", stats.peers_unreachable),
        ] {
            let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            g.encode(peers.encode_family(&ReachLabels { reach })?)?;
        }
        let i = self.rendezvous.introductions();
        let help = "Introductions brokered, by path (punch, relay) and result (made, refused, failed)";
        let kind = prometheus_client::metrics::MetricType::Counter;
        let mut intros = e.encode_descriptor("introductions", help, None, kind)?;
        for (path, result, n) in [
            ("punch", "made", i.punch_made),
            ("punch", "refused", i.punch_refused),
            ("relay", "made", i.relay_made),
            ("relay", "refused", i.relay_refused),
            ("relay", "failed", i.relay_failed),
        ] {
            ConstCounter::new(n).encode(intros.encode_family(&IntroductionLabels { path, result })?)?;
        }
        let relay_seconds = ConstCounter::new(i.relay_micros as f64 / 1e6);
        relay_seconds.encode(e.encode_descriptor(
            "relay_introduction",
            "Summed time of relayed introductions made (the source's allocation on the relay included)",
            Some(&Unit::Seconds),
            relay_seconds.metric_type(),
        )?)?;
        Ok(())
    }
}

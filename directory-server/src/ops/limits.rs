//! Abuse limits: request rates per client IP and per peer (governor's keyed GCRA limiters),
//! requests in progress per IP, connections in total and per IP. Every refusal names the limit
//! and its value; a request refused here costs the server no domain work, so one noisy client
//! cannot slow the others down.
//!
//! Loopback clients (127.0.0.0/8, ::1) skip every per-IP and per-peer limit while
//! `exempt_loopback` is on (the default): that is the operator's own machine (local tools, the
//! load benchmark, tests), and a per-IP limit on it would throttle them all as one client. The
//! total connection limit applies to everyone. The online-peers-per-IP limit is enforced by
//! `Directory::announce`, which owns the presence table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// The `[limits]` table of the config. `0` turns a limit off.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Loopback clients skip the per-IP and per-peer limits.
    pub exempt_loopback: bool,
    /// Sustained gRPC requests per second from one IP address.
    pub ip_requests_per_second: u32,
    /// Requests one IP may send at once above that rate.
    pub ip_request_burst: u32,
    /// Sustained requests per second of one peer (Announce by peer id; Publish, Heartbeat and
    /// Withdraw by session token).
    pub peer_requests_per_second: u32,
    /// Requests one peer may send at once above that rate (a share-list sync is a burst).
    pub peer_request_burst: u32,
    /// gRPC requests in progress at once from one IP address.
    pub ip_concurrent_requests: u32,
    /// Open TCP connections in total, TLS handshakes included.
    pub max_connections: u32,
    /// Open TCP connections from one IP address.
    pub max_connections_per_ip: u32,
    /// Online peers announced from one IP address (peers behind one NAT share it).
    pub max_peers_per_ip: u32,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    pub max_streams_per_connection: u32,
    /// A TLS handshake not finished within this many milliseconds is dropped.
    pub tls_handshake_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            exempt_loopback: true,
            ip_requests_per_second: 100,
            ip_request_burst: 200,
            peer_requests_per_second: 5,
            peer_request_burst: 100,
            ip_concurrent_requests: 64,
            max_connections: 20_000,
            max_connections_per_ip: 64,
            max_peers_per_ip: 64,
            max_streams_per_connection: 128,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

impl LimitsConfig {
    /// Whether the per-IP and per-peer limits apply to a client at `ip`.
    pub fn applies_to(&self, ip: IpAddr) -> bool {
        !(self.exempt_loopback && ip.to_canonical().is_loopback())
    }

    /// Overrides from `QUAVER_LIMITS_<KEY>` variables (e.g. `QUAVER_LIMITS_MAX_PEERS_PER_IP`).
    pub fn apply_env(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), (&'static str, String, String)> {
        fn set<T: std::str::FromStr>(
            env: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            slot: &mut T,
        ) -> Result<(), (&'static str, String, String)>
        where
            T::Err: std::fmt::Display,
        {
            if let Some(v) = env(name) {
                *slot = v.parse().map_err(|e: T::Err| (name, v.clone(), e.to_string()))?;
            }
            Ok(())
        }
        set(env, "QUAVER_LIMITS_EXEMPT_LOOPBACK", &mut self.exempt_loopback)?;
        set(env, "QUAVER_LIMITS_IP_REQUESTS_PER_SECOND", &mut self.ip_requests_per_second)?;
        set(env, "QUAVER_LIMITS_IP_REQUEST_BURST", &mut self.ip_request_burst)?;
        set(env, "QUAVER_LIMITS_PEER_REQUESTS_PER_SECOND", &mut self.peer_requests_per_second)?;
        set(env, "QUAVER_LIMITS_PEER_REQUEST_BURST", &mut self.peer_request_burst)?;
        set(env, "QUAVER_LIMITS_IP_CONCURRENT_REQUESTS", &mut self.ip_concurrent_requests)?;
        set(env, "QUAVER_LIMITS_MAX_CONNECTIONS", &mut self.max_connections)?;
        set(env, "QUAVER_LIMITS_MAX_CONNECTIONS_PER_IP", &mut self.max_connections_per_ip)?;
        set(env, "QUAVER_LIMITS_MAX_PEERS_PER_IP", &mut self.max_peers_per_ip)?;
        set(env, "QUAVER_LIMITS_MAX_STREAMS_PER_CONNECTION", &mut self.max_streams_per_connection)?;
        set(env, "QUAVER_LIMITS_TLS_HANDSHAKE_TIMEOUT_MS", &mut self.tls_handshake_timeout_ms)?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_streams_per_connection == 0 {
            return Err("limits.max_streams_per_connection must be at least 1".into());
        }
        if self.tls_handshake_timeout_ms == 0 {
            return Err("limits.tls_handshake_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Who a per-peer rate is counted for.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum PeerKey {
    /// An Announce, by the peer id it claims.
    Peer(Vec<u8>),
    /// A call inside a session, by its token.
    Token(String),
}

/// A limit that refused a request or connection; `Display` is the message the client gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many requests from {ip}: the limit is {rate} per second (burst {burst}); slow down")]
    IpRate { ip: IpAddr, rate: u32, burst: u32 },
    #[error("too many requests from this peer: the limit is {rate} per second (burst {burst}); slow down")]
    PeerRate { rate: u32, burst: u32 },
    #[error("too many requests in progress from {ip}: the limit is {limit} at once")]
    IpConcurrency { ip: IpAddr, limit: u32 },
    #[error("the directory has {limit} connections open, its limit")]
    Connections { limit: u32 },
    #[error("too many connections from {ip}: the limit is {limit}")]
    IpConnections { ip: IpAddr, limit: u32 },
}

impl Refusal {
    /// The `limit` label of the rejection metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::IpRate { .. } => "ip_rate",
            Refusal::PeerRate { .. } => "peer_rate",
            Refusal::IpConcurrency { .. } => "ip_concurrency",
            Refusal::Connections { .. } => "connections",
            Refusal::IpConnections { .. } => "ip_connections",
        }
    }
}

/// Counts of something held per IP (requests in progress, connections), with a guard that
/// gives its unit back when dropped.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, u32>>);

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<PerIpGuard> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if limit != 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(PerIpGuard { counts: self.clone(), ip })
    }
}

/// One unit of a [`PerIp`] count; the entry disappears at zero, so the map only holds IPs with
/// something open.
pub struct PerIpGuard {
    counts: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A connection counted against the limits; dropping it frees its place.
pub struct ConnectionGuard {
    _ip: Option<PerIpGuard>,
    _total: PerIpGuard,
}

/// The limits in force, shared by the accept loop, the request layer and the service.
pub struct Limits {
    config: LimitsConfig,
    by_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_peer: Option<DefaultKeyedRateLimiter<PeerKey>>,
    in_flight: Arc<PerIp>,
    connections: Arc<PerIp>,
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

/// The key under which all connections are counted for the total.
const TOTAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        let by_ip = quota(config.ip_requests_per_second, config.ip_request_burst).map(RateLimiter::keyed);
        let by_peer =
            quota(config.peer_requests_per_second, config.peer_request_burst).map(RateLimiter::keyed);
        Self { config, by_ip, by_peer, in_flight: Arc::default(), connections: Arc::default() }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Admits one request from `ip`: checks its rate and takes a place among its requests in
    /// progress, held until the guard is dropped.
    pub fn admit_request(&self, ip: IpAddr) -> Result<Option<PerIpGuard>, Refusal> {
        let ip = ip.to_canonical();
        if !self.config.applies_to(ip) {
            return Ok(None);
        }
        self.check_ip_rate(ip)?;
        let limit = self.config.ip_concurrent_requests;
        self.in_flight.try_take(ip, limit).map(Some).ok_or(Refusal::IpConcurrency { ip, limit })
    }

    /// Admits one beat on an open KeepAlive stream: counted against its IP's rate, as a call
    /// would be in the request layer, and against the peer's, as `admit_peer`; it takes no
    /// place among the IP's requests in progress (the stream's opening call had one).
    pub fn admit_beat(&self, ip: Option<IpAddr>, key: PeerKey) -> Result<(), Refusal> {
        if let Some(ip) = ip.map(|ip| ip.to_canonical())
            && self.config.applies_to(ip)
        {
            self.check_ip_rate(ip)?;
        }
        self.admit_peer(ip, key)
    }

    fn check_ip_rate(&self, ip: IpAddr) -> Result<(), Refusal> {
        match &self.by_ip {
            Some(limiter) if limiter.check_key(&ip).is_err() => {
                let (rate, burst) = (self.config.ip_requests_per_second, self.config.ip_request_burst);
                Err(Refusal::IpRate { ip, rate, burst })
            }
            _ => Ok(()),
        }
    }

    /// Counts one call of a peer against its rate (`ip` is where the call came from).
    pub fn admit_peer(&self, ip: Option<IpAddr>, key: PeerKey) -> Result<(), Refusal> {
        if ip.is_some_and(|ip| !self.config.applies_to(ip)) {
            return Ok(());
        }
        match &self.by_peer {
            Some(limiter) if limiter.check_key(&key).is_err() => Err(Refusal::PeerRate {
                rate: self.config.peer_requests_per_second,
                burst: self.config.peer_request_burst,
            }),
            _ => Ok(()),
        }
    }

    /// Admits a new connection from `ip`, or says which limit it is over.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<ConnectionGuard, Refusal> {
        let ip = ip.to_canonical();
        let limit = self.config.max_connections;
        let total = self.connections.try_take(TOTAL, limit).ok_or(Refusal::Connections { limit })?;
        let per_ip = if self.config.applies_to(ip) {
            let limit = self.config.max_connections_per_ip;
            Some(self.connections.try_take(ip, limit).ok_or(Refusal::IpConnections { ip, limit })?)
        } else {
            None
        };
        Ok(ConnectionGuard { _ip: per_ip, _total: total })
    }

    /// Open connections right now.
    pub fn open_connections(&self) -> u32 {
        let map = self.connections.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&TOTAL).copied().unwrap_or(0)
    }

    /// Runs `forget_idle` every minute until `stop`.
    pub async fn forget_idle_clients(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => self.forget_idle(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Forgets rate-limiter state of clients that are back to a full bucket, so the keyed
    /// limiters do not grow with every address and token ever seen. Call now and then.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.by_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.by_peer {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

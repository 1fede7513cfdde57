//! The session task: connect, announce, sync, heartbeat, reconnect, withdraw. Policy lives in
//! [`Backoff`] and [`super::sync`]; this file moves calls and time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quaver_core::nat::NatKind;
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::{AnnounceRequest, HeartbeatRequest, WithdrawRequest};
use quaver_shared::limits::MAX_GRPC_MESSAGE_BYTES;
use quaver_shared::{NodeKey, ShareDigest, announce_proof};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use super::keep_alive::Beats;
use super::rendezvous::{self, Offer};
use super::{AGENT, Backoff, SessionConfig, SessionError, SessionState};
use crate::store::{Published, Store};
use quaver_shared::directory_endpoint::directory_endpoint;

pub(super) type Client = DirectoryClient<Channel>;

/// Used when the directory names no heartbeat interval (it always should).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Bound on one address discovery (two QUIC handshakes and two answers).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest heartbeat interval taken from a directory, so a bad answer cannot silence us.
const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// How a stretch of work ended short of its goal.
pub(super) enum End {
    /// Shutdown was asked for.
    Stop,
    Failed(SessionError),
}

impl<E: Into<SessionError>> From<E> for End {
    fn from(e: E) -> Self {
        End::Failed(e.into())
    }
}

/// A live session with the directory.
pub(super) struct Live {
    pub client: Client,
    pub token: String,
    /// The digest of the share list the directory holds for us, as it last said; `None` when
    /// it sent something that is not a digest (then everything is resent).
    pub known: Option<ShareDigest>,
    heartbeat: Duration,
    beats: Beats,
}

pub(super) struct Worker {
    pub config: SessionConfig,
    pub store: Arc<Store>,
    /// Signs each Announce's challenge: the proof that we hold our PeerId's key.
    key: Arc<NodeKey>,
    /// The node's QUIC endpoint: its port is announced, and address discovery dials from it.
    endpoint: quinn::Endpoint,
    /// The endpoint socket's TURN splice, for relayed introductions (`None`: it answers them
    /// with a refusal).
    splice: Option<Arc<quaver_shared::turn::TurnSplice>>,
    /// The node certificate the rendezvous endpoints see (`None`: it could not be made, so
    /// there is no discovery).
    identity: Option<Arc<quaver_shared::tls::ClientAuth>>,
    /// The port to announce: the endpoint's own, or the one the node's NAT maps it to.
    announce_port: u16,
    /// The socket's private address, announced for peers behind the same public IP.
    local_address: Option<std::net::SocketAddr>,
    /// The connection to the directory's first rendezvous endpoint, while it lives; shared
    /// with the node's downloads, which ask for introductions on it.
    rendezvous: watch::Sender<Option<quinn::Connection>>,
    free_slots: watch::Receiver<u32>,
    changed: Arc<Notify>,
    pub state: watch::Sender<SessionState>,
    backoff: Backoff,
    /// The acknowledged ids for this directory; opened on first use.
    pub published: Option<Published>,
    /// Digest of `published`, computed once and then kept up to date by this task, its only
    /// writer.
    pub remembered: Option<ShareDigest>,
}

/// Runs `call` bounded by `after`.
pub(super) async fn bounded<T>(
    call: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(after, fut).await {
        Err(_) => Err(SessionError::Timeout { call, after }),
        Ok(Err(status)) => Err(SessionError::Rpc { call, status }),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

/// Whether shutdown was asked for (a dropped handle counts).
pub(super) fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Completes once shutdown is asked for (or the handle is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What woke the connected loop.
enum Wake {
    Stop,
    Beat,
    Changed,
    /// The KeepAlive stream ended or failed between beats.
    Lost(SessionError),
}

impl Worker {
    pub fn new(
        config: SessionConfig,
        store: Arc<Store>,
        key: Arc<NodeKey>,
        socket: super::NodeSocket,
        free_slots: watch::Receiver<u32>,
        changed: Arc<Notify>,
        state: watch::Sender<SessionState>,
    ) -> Self {
        // Jitter only has to differ between nodes and runs; no secret is involved.
        let clock = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&key.peer_id().as_bytes()[..8]);
        let backoff =
            Backoff::new(config.backoff_initial, config.backoff_max, clock ^ u64::from_le_bytes(id));
        let identity = quaver_shared::tls::ClientAuth::new(&key)
            .inspect_err(|e| tracing::warn!(error = %e, "no node certificate for address discovery"))
            .ok();
        let super::NodeSocket { endpoint, splice } = socket;
        let announce_port = endpoint.local_addr().map_or(0, |a| a.port());
        Self {
            config,
            store,
            key,
            endpoint,
            splice,
            identity,
            announce_port,
            local_address: None,
            rendezvous: watch::channel(None).0,
            free_slots,
            changed,
            state,
            backoff,
            published: None,
            remembered: None,
        }
    }

    /// The rendezvous connection, as it comes and goes.
    pub fn rendezvous(&self) -> watch::Receiver<Option<quinn::Connection>> {
        self.rendezvous.subscribe()
    }

    /// Keeps the node announced until `stop` says otherwise, then withdraws.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let url = self.config.directory_url.clone();
        tracing::info!(directory = %url, "directory session starting");
        let mut client: Option<Client> = None;
        loop {
            let opened = tokio::select! {
                _ = stopped(&mut stop) => break,
                opened = self.open(&mut client) => opened,
            };
            let (error, established) = match opened {
                Err(e) => (e, false),
                Ok(mut live) => match self.serve(&mut live, &mut stop).await {
                    (End::Stop, _) => {
                        self.withdraw(&live).await;
                        break;
                    }
                    (End::Failed(e), established) => (e, established),
                },
            };
            self.state.send_modify(|s| s.lost(quaver_shared::report::describe(&error), SystemTime::now()));
            if error.is_unauthenticated() && established {
                // The directory forgot the session (lease ran out, it restarted, we announced
                // elsewhere): announce again right away on the same connection.
                tracing::info!(directory = %url, error = %error, "session lost; announcing again");
                continue;
            }
            if !error.is_unauthenticated() {
                // A fresh connection next time: this one may be dead.
                client = None;
            }
            let wait = self.backoff.next_delay();
            tracing::warn!(directory = %url, error = %error, retry_in = ?wait, "directory session failed");
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.state.send_modify(|s| s.connected = false);
        tracing::info!(directory = %url, "directory session ended");
    }

    /// Connects (unless `client` is still usable) and announces.
    async fn open(&mut self, client: &mut Option<Client>) -> Result<Live, SessionError> {
        let mut c = match client.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let (digest, count) = self.store.summary();
        let request = AnnounceRequest {
            quic_port: u32::from(self.announce_port),
            local_address: self.local_address.map(|a| a.to_string()).unwrap_or_default(),
            share_digest: digest.as_bytes().to_vec(),
            share_count: count,
            free_upload_slots: *self.free_slots.borrow_and_update(),
            agent: AGENT.into(),
            ..Default::default()
        };
        // Challenge and signed Announce, bounded together: both are one round trip each.
        let signed = announce_proof::announce(&mut c, &self.key, request);
        let answer = bounded("Announce", self.config.call_timeout, signed).await;
        // Kept for the next attempt; `run` drops it if the failure says it may be dead.
        *client = Some(c.clone());
        let answer = answer?;
        if answer.session_token.is_empty() {
            return Err(SessionError::BadAnswer { call: "Announce", what: "no session token" });
        }
        let known = ShareDigest::from_slice(&answer.known_digest);
        if known.is_none() {
            tracing::warn!("directory sent a malformed known_digest; resending the share list");
        }
        let heartbeat = heartbeat_interval(answer.heartbeat_interval_seconds, answer.lease_seconds);
        let observed = Some(answer.observed_address.clone()).filter(|a| !a.is_empty());
        tracing::info!(
            directory = %self.config.directory_url,
            address = observed.as_deref().unwrap_or("?"),
            reachable = answer.reachable,
            files = count,
            directory_files = answer.known_count,
            "announced"
        );
        self.state.send_modify(|s| {
            s.announces += 1;
            s.observed_address = observed;
            s.reachable = Some(answer.reachable);
            s.introducible = answer.introducible;
            s.relayed = answer.relayed;
        });
        if self.rediscover(&answer).await {
            // The NAT maps the endpoint to another port than its own: announce that one, so
            // the directory checks (and hands out) the address others can use.
            return Box::pin(self.open(client)).await;
        }
        Ok(Live { client: c, token: answer.session_token, known, heartbeat, beats: Beats::default() })
    }

    /// Learns the node's mapped address and NAT kind unless the rendezvous connection still
    /// lives (`rendezvous`). True when the port to announce changed.
    async fn rediscover(&mut self, answer: &quaver_shared::directory::v1::AnnounceResponse) -> bool {
        if self.rendezvous.borrow().as_ref().is_some_and(|c| c.close_reason().is_none()) {
            return false;
        }
        let Some(identity) = self.identity.clone() else { return false };
        let url = self.config.directory_url.clone();
        let found = async {
            let ip = rendezvous::directory_ip(&url).await?;
            let Some(offer) = Offer::from_answer(ip, &answer.rendezvous_ports, &answer.directory_id)? else {
                return Err(rendezvous::DiscoveryError::NotOffered);
            };
            rendezvous::discover(&self.endpoint, &identity, &offer, DISCOVERY_TIMEOUT).await
        };
        match found.await {
            Ok(found) => {
                let mapping = found.mapping;
                let local = Some(found.local).filter(|a| quaver_core::nat::is_private(a.ip()));
                let learned_local = self.local_address.is_none() && local.is_some();
                self.local_address = local.or(self.local_address);
                tracing::info!(
                    nat = %mapping.kind,
                    public = %mapping.public.map(|a| a.to_string()).unwrap_or_default(),
                    "address discovered"
                );
                let (channel, endpoint) = (found.channel.clone(), self.endpoint.clone());
                tokio::spawn(rendezvous::answer_introductions(channel, endpoint, self.splice.clone()));
                self.rendezvous.send_replace(Some(found.channel));
                self.state.send_modify(|s| {
                    s.nat = Some(mapping.kind);
                    s.public_address = mapping.public.map(|a| a.to_string());
                    s.discovery_error = None;
                });
                let mapped_port =
                    mapping.public.filter(|_| mapping.kind == NatKind::EndpointIndependent).map(|a| a.port());
                let moved = mapped_port.is_some_and(|port| port != self.announce_port);
                if let Some(port) = mapped_port {
                    self.announce_port = port;
                }
                // The directory judges a peer it cannot dial introducible (or relayed) only once
                // its rendezvous connection is open: announce again to be judged so.
                let punchable = mapping.kind != NatKind::Symmetric;
                let relay_offered = !answer.relay_address.is_empty() && self.splice.is_some();
                let unjudged = !answer.reachable && !answer.introducible && !answer.relayed;
                moved || (unjudged && (punchable || relay_offered)) || learned_local
            }
            Err(e) => {
                tracing::info!(error = %e, "address discovery failed; the NAT kind stays unknown");
                self.state.send_modify(|s| {
                    s.nat = Some(NatKind::Unknown);
                    s.discovery_error = Some(e.to_string());
                });
                false
            }
        }
    }

    async fn connect(&self) -> Result<Client, SessionError> {
        let config = &self.config;
        let endpoint = directory_endpoint(&config.directory_url, config.directory_ca.as_deref())?
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.call_timeout)
            .tcp_nodelay(true);
        let channel = match tokio::time::timeout(self.config.connect_timeout, endpoint.connect()).await {
            Err(_) => {
                return Err(SessionError::Timeout { call: "connect", after: self.config.connect_timeout });
            }
            Ok(channel) => channel.map_err(SessionError::Connect)?,
        };
        Ok(DirectoryClient::new(channel).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }

    /// Syncs the share list, then heartbeats and republishes on changes until something
    /// fails or shutdown is asked for. The flag says whether the session got established.
    async fn serve(&mut self, live: &mut Live, stop: &mut watch::Receiver<bool>) -> (End, bool) {
        if let Err(end) = self.sync(live, stop).await {
            return (end, false);
        }
        // Open now, not at the first beat: the stream is how a dead directory is noticed at
        // once (see `Beats::lost`), and a status says "connected" only with it open.
        let timeout = self.config.call_timeout;
        if let Err(e) = live.beats.open(&mut live.client, timeout).await {
            return (End::Failed(e), false);
        }
        self.backoff.reset();
        self.state.send_modify(|s| {
            s.connected = true;
            s.since = Some(SystemTime::now());
        });
        self.answered(live);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + live.heartbeat, live.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = Arc::clone(&self.changed);
        loop {
            let wake = tokio::select! {
                _ = stopped(stop) => Wake::Stop,
                _ = beat.tick() => Wake::Beat,
                _ = changed.notified() => Wake::Changed,
                lost = live.beats.lost() => Wake::Lost(lost),
            };
            let beating = matches!(wake, Wake::Beat);
            let result = match wake {
                Wake::Stop => return (End::Stop, true),
                Wake::Beat => self.heartbeat(live, stop).await,
                Wake::Changed => self.sync(live, stop).await,
                Wake::Lost(e) => Err(End::Failed(e)),
            };
            if let Err(end) = result {
                return (end, true);
            }
            if beating {
                self.answered(live);
            }
        }
    }

    /// The directory just answered: the session holds until the next answer is overdue.
    fn answered(&self, live: &Live) {
        let until = std::time::Instant::now() + live.heartbeat + self.config.call_timeout;
        self.state.send_modify(|s| s.answered_until = Some(until));
    }

    async fn heartbeat(&mut self, live: &mut Live, stop: &watch::Receiver<bool>) -> Result<(), End> {
        let request = HeartbeatRequest {
            session_token: live.token.clone(),
            free_upload_slots: *self.free_slots.borrow_and_update(),
        };
        live.beats.beat(&mut live.client, request, self.config.call_timeout).await?;
        // Safety net: a store change nobody reported is published within one beat.
        if self.remembered != Some(self.store.digest()) {
            self.sync(live, stop).await?;
        }
        Ok(())
    }

    /// Ends the session on the directory; the peer is offline at once.
    async fn withdraw(&mut self, live: &Live) {
        let request =
            WithdrawRequest { session_token: live.token.clone(), content_ids: vec![], go_offline: true };
        let mut client = live.client.clone();
        match bounded("Withdraw", self.config.withdraw_timeout, client.withdraw(request)).await {
            Ok(_) => tracing::info!(directory = %self.config.directory_url, "withdrawn; offline"),
            // The lease runs out on its own; nothing else to do.
            Err(e) => tracing::warn!(directory = %self.config.directory_url, error = %e, "withdraw failed"),
        }
    }
}

/// The heartbeat period: what the directory asks for, kept inside its lease and within sane
/// bounds.
fn heartbeat_interval(interval_seconds: u32, lease_seconds: u32) -> Duration {
    let mut beat = match interval_seconds {
        0 => DEFAULT_HEARTBEAT,
        s => Duration::from_secs(u64::from(s)),
    };
    if lease_seconds > 0 {
        // At least two beats per lease, so one lost beat does not cost the lease.
        beat = beat.min(Duration::from_secs(u64::from(lease_seconds)) / 2);
    }
    beat.clamp(Duration::from_millis(500), MAX_HEARTBEAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_interval_follows_the_directory_within_its_lease() {
        assert_eq!(heartbeat_interval(30, 90), Duration::from_secs(30));
        assert_eq!(heartbeat_interval(0, 0), DEFAULT_HEARTBEAT);
        assert_eq!(heartbeat_interval(60, 90), Duration::from_secs(45), "two beats per lease");
        assert_eq!(heartbeat_interval(1, 1), Duration::from_millis(500));
        assert_eq!(heartbeat_interval(u32::MAX, 0), MAX_HEARTBEAT);
    }
}

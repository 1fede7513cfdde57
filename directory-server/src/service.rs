//! The gRPC face of the directory: thin handlers that take the request off the wire, run the
//! domain method on the blocking pool (sled and tantivy calls block), and make writes durable
//! before they are acknowledged. No policy lives here.
//!
//! Some calls skip the blocking pool, because handing a call to another thread costs more than
//! they do: Heartbeat and the beats of a KeepAlive stream, and most Locates (all memory only;
//! a Locate of a file with many online sources, whose ranking takes longer, or one that would
//! wait for a writer of the online sources, goes to the pool after all).
//!
//! `Announce` is the one async step before the domain call: the connect-back check of the
//! announced address (`reach`), whose verdict the domain receives as `reachable`.
//!
//! The per-peer request rate (`ops::limits`) is checked here, where the peer id or session
//! token is known: before any domain work, answered RESOURCE_EXHAUSTED.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use quaver_shared::directory::v1::directory_server::Directory as DirectoryApi;
use quaver_shared::directory::v1::*;
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::now_unix_ms;
use crate::directory::{Directory, ValidAnnounce};
use crate::error::DirectoryError;
use crate::keep_alive::Answers;
use crate::ops::limits::{Limits, PeerKey, Refusal};
use crate::ops::metrics::Metrics;
use crate::presence::Reach;
use crate::reach::ConnectBack;
use crate::rendezvous::Rendezvous;

#[derive(Clone)]
pub struct DirectoryService {
    dir: Arc<Directory>,
    reach: Arc<ConnectBack>,
    rendezvous: Arc<Rendezvous>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    /// Searches running at once: one per core. A search is pure CPU; more of them at once
    /// than cores only interleave on the blocking pool's threads, each evicting the others'
    /// data from the caches, and every one finishes later. The rest wait here, in order.
    search_slots: Arc<Semaphore>,
    /// Turns true when the server begins to stop: open KeepAlive streams end then, or the
    /// graceful stop would wait for them forever.
    stopping: watch::Receiver<bool>,
}

impl DirectoryService {
    pub fn new(
        dir: Arc<Directory>,
        reach: Arc<ConnectBack>,
        rendezvous: Arc<Rendezvous>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let search_slots = Arc::new(Semaphore::new(cores));
        Self { dir, reach, rendezvous, limits, metrics, search_slots, stopping }
    }

    /// Counts a call of one peer against its rate.
    fn admit<T>(&self, request: &Request<T>, key: PeerKey) -> Result<(), Status> {
        let ip = request.remote_addr().map(|a| a.ip());
        self.limits.admit_peer(ip, key).map_err(|refusal| self.refused(refusal))
    }

    /// The answer to a request a limit refused, counted.
    fn refused(&self, refusal: Refusal) -> Status {
        self.metrics.rate_limited(refusal.label());
        Status::resource_exhausted(refusal.to_string())
    }

    /// One beat of a KeepAlive stream: the limits a Heartbeat call meets, then the same lease
    /// renewal.
    fn beat(&self, ip: Option<IpAddr>, beat: HeartbeatRequest) -> Result<HeartbeatResponse, Status> {
        let answer = match self.limits.admit_beat(ip, PeerKey::Token(beat.session_token.clone())) {
            Ok(()) => self.dir.heartbeat(beat, Instant::now()).map_err(Status::from),
            Err(refusal) => Err(self.refused(refusal)),
        };
        self.metrics.beat(answer.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        answer
    }

    /// Runs a domain call on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Directory) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, Status> {
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || f(&dir)).await {
            Ok(result) => result.map_err(Status::from),
            Err(e) => {
                tracing::error!(error = %e, "request task failed");
                Err(Status::internal("internal error; the directory logged the details"))
            }
        }
    }

    /// Like `run`, then waits until the catalog is on disk: an acknowledged write survives a
    /// crash.
    async fn run_durable<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Directory) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, Status> {
        self.run(move |d| {
            let out = f(d)?;
            d.flush_blocking()?;
            Ok(out)
        })
        .await
    }
}

#[tonic::async_trait]
impl DirectoryApi for DirectoryService {
    async fn challenge(
        &self,
        request: Request<ChallengeRequest>,
    ) -> Result<Response<ChallengeResponse>, Status> {
        let remote = request.remote_addr().ok_or_else(|| {
            Status::failed_precondition("the directory cannot see this connection's address")
        })?;
        // Not charged to the PeerId's rate: anyone may name any PeerId here, and a flood of
        // challenges in a victim's name must not rate-limit the victim. The per-IP admission
        // of `ops::layer` bounds them; issuing one keeps no state.
        // Memory only and short (one keyed hash): no need for the blocking pool.
        self.dir.challenge(request.get_ref(), remote, Instant::now()).map(Response::new).map_err(Status::from)
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let remote = request.remote_addr().ok_or_else(|| {
            Status::failed_precondition("the directory cannot see this connection's address")
        })?;
        let announce = ValidAnnounce::new(request.get_ref(), remote).map_err(Status::from)?;
        // Proof of the key first: an unproven Announce neither dials anyone nor touches the
        // session of the PeerId it names, nor spends that peer's request rate (the per-IP
        // admission of `ops::layer` bounds how many such attempts anyone makes).
        self.dir.check_proof(request.get_ref(), &announce, Instant::now()).map_err(Status::from)?;
        // A banned peer (or IP) is told so, and until when, before anything is spent on it;
        // `Directory::announce` checks again for a ban made meanwhile.
        if let Some(refusal) = self.dir.ban_refusal(&announce.peer, announce.address.ip(), now_unix_ms()) {
            self.metrics.banned_announce();
            return Err(Status::permission_denied(refusal));
        }
        self.admit(&request, PeerKey::Peer(announce.peer.to_vec()))?;
        let reachable = self.reach.reachable(announce.peer, announce.address).await;
        self.metrics.connect_back(reachable);
        // A peer the check could not reach is still a source if it can be introduced (its
        // rendezvous connection is open and its router keeps one mapping for every
        // destination), or else met through the relay (its connection is open and the
        // directory runs one).
        let reach = match reachable {
            true => Reach::Direct,
            false if self.rendezvous.punchable(&announce.peer) => Reach::Introduced,
            false if self.rendezvous.relayable(&announce.peer) => Reach::Relayed,
            false => Reach::Unreachable,
        };
        let answer = self.run_durable(move |d| d.announce(announce, reach, Instant::now())).await;
        match answer.as_ref().map_err(Status::code) {
            Err(tonic::Code::ResourceExhausted) => self.metrics.rate_limited("peers_per_ip"),
            Err(tonic::Code::PermissionDenied) => self.metrics.banned_announce(),
            _ => {}
        }
        answer.map(|mut a| {
            a.rendezvous_ports = self.rendezvous.ports().map(u32::from).to_vec();
            a.directory_id = self.rendezvous.id().to_vec();
            a.relay_address = self.rendezvous.relay_address().unwrap_or_default().to_owned();
            Response::new(a)
        })
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        self.admit(&request, PeerKey::Token(request.get_ref().session_token.clone()))?;
        let req = request.into_inner();
        self.run_durable(move |d| d.publish(req, Instant::now())).await.map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.admit(&request, PeerKey::Token(request.get_ref().session_token.clone()))?;
        // Memory only and short: no need for the blocking pool.
        self.dir.heartbeat(request.into_inner(), Instant::now()).map(Response::new).map_err(Status::from)
    }

    type KeepAliveStream = Answers<Streaming<HeartbeatRequest>>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let ip = request.remote_addr().map(|a| a.ip());
        let service = self.clone();
        let beat = Box::new(move |beat: HeartbeatRequest| service.beat(ip, beat));
        let mut stop = self.stopping.clone();
        let stopping = Box::pin(async move {
            // A dropped sender means the server is gone: stopping too.
            let _ = stop.wait_for(|stopping| *stopping).await;
        });
        Ok(Response::new(Answers::new(request.into_inner(), beat, stopping)))
    }

    async fn withdraw(
        &self,
        request: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawResponse>, Status> {
        self.admit(&request, PeerKey::Token(request.get_ref().session_token.clone()))?;
        let req = request.into_inner();
        self.run_durable(move |d| d.withdraw(req, Instant::now())).await.map(Response::new)
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let req = request.into_inner();
        let _slot = self.search_slots.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        self.run(move |d| d.search(req)).await.map(Response::new)
    }

    async fn locate(&self, request: Request<LocateRequest>) -> Result<Response<LocateResponse>, Status> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let asker = quaver_shared::PeerId::from_slice(&req.peer_id).ok();
        // Most files have few sources: answered here, without a trip to the blocking pool.
        if let Some(answer) =
            self.dir.try_locate_quickly(&req, remote, Instant::now()).map_err(Status::from)?
        {
            return Ok(Response::new(self.connectable(answer, asker)));
        }
        let answer = self.run(move |d| d.locate(&req, remote, Instant::now())).await?;
        Ok(Response::new(self.connectable(answer, asker)))
    }

    async fn get_file(&self, request: Request<GetFileRequest>) -> Result<Response<GetFileResponse>, Status> {
        let req = request.into_inner();
        self.run(move |d| d.get_file(req)).await.map(Response::new)
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        self.dir.stats(Instant::now()).map(Response::new).map_err(Status::from)
    }
}

impl DirectoryService {
    /// Says for each source how `asker` reaches it, and leaves out those it cannot: a source
    /// reached by introductions goes through the relay when the asker cannot punch (a
    /// symmetric NAT), and relayed sources need an asker with a channel to ask on. Relayed
    /// sources come last: a download uses them only when the others are not enough. An answer
    /// of direct sources only (the common case) costs no look at the rendezvous channels.
    fn connectable(
        &self,
        mut answer: LocateResponse,
        asker: Option<quaver_shared::PeerId>,
    ) -> LocateResponse {
        use quaver_shared::directory::v1::Reach as R;
        if answer.sources.iter().all(|s| s.reach == i32::from(R::Direct)) {
            return answer;
        }
        let punchable = asker.is_some_and(|p| self.rendezvous.punchable(&p));
        let relayable = asker.is_some_and(|p| self.rendezvous.relayable(&p));
        answer.sources.retain_mut(|s| match R::try_from(s.reach) {
            Ok(R::Direct) => true,
            Ok(R::Introduction) if punchable => true,
            Ok(R::Introduction | R::Relay) if relayable => {
                let source = quaver_shared::PeerId::from_slice(&s.peer_id);
                let relayable = source.is_ok_and(|p| self.rendezvous.relayable(&p));
                s.reach = R::Relay.into();
                relayable
            }
            _ => false,
        });
        answer.sources.sort_by_key(|s| s.reach == i32::from(R::Relay));
        answer
    }
}

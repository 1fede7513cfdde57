//! The directory's domain logic: one method per RPC, over the catalog (durable), the presence
//! table and online sources (memory) and the search index.
//!
//! Sources: a peer counts as a source of its files (online sources: counts, Locate) only while it holds
//! a lease that passed the connect-back check at its last Announce (`reachable`; the service
//! layer runs the check before calling [`Directory::announce`]). An unreachable peer still gets
//! its session, and its share list is stored, but it is never handed out.
//!
//! Concurrency, and why it is correct:
//! - `membership` serialises everything that changes *who is online with what*: announce,
//!   publish, withdraw and lease expiry. Each of them first sweeps expired leases, so the
//!   invariant "a file's online sources = the online, reachable peers sharing it" holds
//!   whenever the lock is free.
//! - `presence` is locked briefly for heartbeats and lookups; `online` is read-locked for the
//!   length of one search, so the ranking sees a consistent picture, and for the copy of one
//!   file's source list a Locate takes (it then ranks them under `presence`, never both).
//! - Lock order is always membership → presence → online, and membership → `storage`;
//!   `bans` and `challenges` are leaves, held for one lookup or change.
//! - `storage` keeps sled's multi-tree transaction (a `Publish`) from running while any other
//!   request of ours is inside sled or flushing it: the transaction holds it for writing,
//!   every other catalog read and every flush for reading. sled 0.34 can deadlock otherwise:
//!   under a load of concurrent publishes and flushes (1,000 announcing peers) the transaction
//!   waited for a sled reader that never finished and every request queued behind it. Taken
//!   alone and last, it cannot form a cycle with the other locks.
//!
//! This module never speaks gRPC transport and never sleeps: the server module drives its
//! timers (`expire_leases`, `index_pending`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Instant;

use quaver_shared::directory::v1::*;
use quaver_shared::limits::*;
use quaver_shared::{ContentId, PeerId, ShareDigest};

use crate::bans::Bans;
use crate::catalog::{Catalog, PublishOutcome, SourceChange, StoredFile, now_unix_ms};
use crate::config::Config;
use crate::error::{DirectoryError, Result, invalid};
use crate::hints::{Hints, Taken};
use crate::index::{IndexDoc, IndexFilters, OpenOutcome, SearchIndex};
use crate::online::{Counts, OnlineSource, OnlineSources};
use crate::presence::{AnnounceOutcome, Departed, Presence};
use crate::proof::{Challenges, ProofError};
use crate::ranking::{self, Candidate};
use crate::validate;

/// Online sources a Locate ranks on the caller's thread at most; a file with more is located
/// on the blocking pool (see [`Directory::try_locate_quickly`]).
pub const INLINE_LOCATE_SOURCES: usize = 256;

/// A validated Locate: which file, who asks (left out of the answer), how many sources at most.
struct LocateAsk {
    id: ContentId,
    asker: Option<PeerId>,
    max: u32,
}

impl LocateAsk {
    fn new(req: &LocateRequest) -> Result<Self> {
        let id = validate::content_id("content_id", &req.content_id)?;
        let asker =
            if req.peer_id.is_empty() { None } else { Some(validate::peer_id("peer_id", &req.peer_id)?) };
        let max = if req.max_sources == 0 { DEFAULT_LOCATE_SOURCES } else { req.max_sources };
        if max > MAX_LOCATE_SOURCES {
            return Err(invalid(format!("max_sources {max} is over the limit of {MAX_LOCATE_SOURCES}")));
        }
        Ok(Self { id, asker, max })
    }
}

/// How much a file's sources weigh in its search ranking (text relevance times this):
/// relevance first; online sources break near-ties, with diminishing returns, and a complete
/// source a little more. Grows with `online`, so the weight of the most-sourced file bounds
/// all others (search uses that bound to skip documents).
fn source_weight(online: u32, complete: bool) -> f32 {
    1.0 + 0.25 * (online as f32).ln_1p() + 0.1 * f32::from(u8::from(complete))
}

/// A copy of the online sources of `id` (none for an unknown file), or `None` when there are
/// more than `at_most`. Copied so that ranking, which locks `presence`, runs after the `online`
/// lock is released.
fn copy_sources(online: &OnlineSources, id: &ContentId, at_most: usize) -> Option<Vec<OnlineSource>> {
    let sources = online.sources(id);
    (sources.len() <= at_most).then(|| sources.to_vec())
}

/// How many catalog entries one indexing round takes at most.
const INDEX_BATCH: usize = 20_000;

pub struct Directory {
    config: Config,
    catalog: Catalog,
    index: SearchIndex,
    membership: Mutex<()>,
    storage: RwLock<()>,
    presence: Mutex<Presence>,
    online: RwLock<OnlineSources>,
    /// Demand counts and the rarity hints waiting for each peer's next beat (see `hints`). Always
    /// the innermost lock.
    hints: Mutex<Hints>,
    /// The announce proofs' secret and the nonces already used (see `proof`).
    challenges: Mutex<Challenges>,
    /// Operator bans in force (stored in the catalog's `bans` tree; see `admin_ops`).
    bans: Mutex<Bans>,
    started: Instant,
    files_total: AtomicU64,
    sources_total: AtomicU64,
    /// Leases that ran out since start (metrics).
    leases_expired: AtomicU64,
}

/// The online holders of file `id`.
fn holders<'a>(online: &'a OnlineSources, id: &ContentId) -> impl Iterator<Item = &'a PeerId> + 'a {
    online.sources(id).iter().map(|(peer, _)| peer)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole directory down with poisoned locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shared(l: &RwLock<()>) -> std::sync::RwLockReadGuard<'_, ()> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive(l: &RwLock<()>) -> std::sync::RwLockWriteGuard<'_, ()> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// An Announce that passed validation: who claims to be online, and the address the directory
/// would hand out for it (the IP the request came from, the port it stated). The service layer
/// checks that address by connecting back before it calls [`Directory::announce`].
#[derive(Clone, Debug)]
pub struct ValidAnnounce {
    pub peer: PeerId,
    pub address: SocketAddr,
    pub free_upload_slots: u32,
    /// Its socket's private address, handed to peers behind the same public IP.
    pub local: Option<SocketAddr>,
}

impl ValidAnnounce {
    /// Validates `req`, which arrived over a connection from `remote`.
    pub fn new(req: &AnnounceRequest, remote: SocketAddr) -> Result<Self> {
        let peer = validate::peer_id("peer_id", &req.peer_id)?;
        let port = u16::try_from(req.quic_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("quic_port {} is not a port (1..=65535)", req.quic_port)))?;
        if !req.share_digest.is_empty() && ShareDigest::from_slice(&req.share_digest).is_none() {
            return Err(invalid("share_digest must be empty or exactly 32 bytes"));
        }
        validate::text("agent", &req.agent, MAX_AGENT_BYTES)?;
        let address = SocketAddr::new(remote.ip().to_canonical(), port);
        let local = validate::local_address("local_address", &req.local_address)?;
        Ok(Self { peer, address, free_upload_slots: req.free_upload_slots, local })
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DirectoryError::Internal("system random generator failed".into()))?;
    Ok(bytes)
}

fn new_token() -> Result<String> {
    Ok(hex::encode(random::<24>()?))
}

impl Directory {
    /// Opens the catalog and index under `config.data_dir`; a missing or corrupt index is
    /// recreated and refilled from the catalog by `index_pending`.
    pub fn open(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            DirectoryError::Internal(format!("cannot create data dir {}: {e}", config.data_dir.display()))
        })?;
        let started = Instant::now();
        let catalog = Catalog::open(&config.data_dir.join("catalog"))?;
        let catalog_opened = started.elapsed();
        let (index, outcome) = SearchIndex::open_or_create(&config.data_dir.join("index"))?;
        let index_opened = started.elapsed() - catalog_opened;
        let directory = Self::assemble(config, catalog, index, outcome)?;
        tracing::info!(
            ?catalog_opened,
            ?index_opened,
            files = directory.files_total.load(Ordering::Relaxed),
            "directory opened"
        );
        Ok(directory)
    }

    /// A directory in memory and temporary files, for tests and benchmarks.
    pub fn temporary(config: Config) -> Result<Self> {
        Self::assemble(config, Catalog::temporary()?, SearchIndex::in_memory()?, OpenOutcome::Created)
    }

    fn assemble(config: Config, catalog: Catalog, index: SearchIndex, outcome: OpenOutcome) -> Result<Self> {
        if !matches!(outcome, OpenOutcome::Opened) {
            let n = catalog.mark_all_unindexed()?;
            if n > 0 {
                tracing::warn!(
                    files = n,
                    "search index was missing or corrupt; rebuilding it from the catalog"
                );
            }
        }
        Ok(Self {
            files_total: AtomicU64::new(catalog.file_count()?),
            sources_total: AtomicU64::new(catalog.source_count()?),
            leases_expired: AtomicU64::new(0),
            presence: Mutex::new(Presence::new(config.lease())),
            online: RwLock::new(OnlineSources::default()),
            hints: Mutex::new(Hints::new(Instant::now())),
            challenges: Mutex::new(Challenges::new(random()?, Instant::now())),
            bans: Mutex::new(admin_ops::load_bans(&catalog, now_unix_ms())?),
            membership: Mutex::new(()),
            storage: RwLock::new(()),
            started: Instant::now(),
            config,
            catalog,
            index,
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Runs `f` on the catalog while no request can change it: a consistent backup. Holding
    /// `membership` stops every writer of the trees a backup carries (publish, withdraw,
    /// announce, lease expiry) while searches, lookups and heartbeats go on; `storage` is
    /// taken shared, as for any catalog read (no transaction can be waiting for it).
    pub fn with_frozen_catalog<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        let _m = lock(&self.membership);
        let _storage = shared(&self.storage);
        f(&self.catalog)
    }

    /// Removes expired leases; their peers' files stop counting as online. Call with the
    /// membership lock held.
    fn sweep(&self, now: Instant) -> Result<usize> {
        let expired = lock(&self.presence).expire(now);
        self.leases_expired.fetch_add(expired.len() as u64, Ordering::Relaxed);
        for Departed { peer, was_source } in &expired {
            tracing::info!(peer = %peer, "lease expired; peer is offline");
            if *was_source {
                self.apply_peer_files(peer, false)?;
            }
        }
        Ok(expired.len())
    }

    /// Adds (online) or removes (offline) all of a peer's files from the online sources.
    fn apply_peer_files(&self, peer: &PeerId, online: bool) -> Result<()> {
        let files = {
            let _storage = shared(&self.storage);
            self.catalog.peer_file_ids(peer)?
        };
        let mut sources = self.online_mut();
        let mut hints = lock(&self.hints);
        for (key, id, complete) in files {
            let (change, newcomer) = if online {
                (Some(sources.add(key, &id, *peer, complete)), Some(*peer))
            } else {
                (sources.remove(key, &id, peer), None)
            };
            if let Some((before, after)) = change {
                hints.sources_changed(&id, before, after, holders(&sources, &id), newcomer);
            }
        }
        if !online {
            hints.forget(peer);
        }
        Ok(())
    }

    fn online_mut(&self) -> std::sync::RwLockWriteGuard<'_, OnlineSources> {
        self.online.write().unwrap_or_else(|e| e.into_inner())
    }

    fn online(&self) -> std::sync::RwLockReadGuard<'_, OnlineSources> {
        self.online.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn expire_leases(&self, now: Instant) -> Result<usize> {
        let _m = lock(&self.membership);
        self.sweep(now)
    }

    /// A nonce for the next Announce of the request's PeerId from `remote`'s IP.
    pub fn challenge(
        &self,
        req: &ChallengeRequest,
        remote: SocketAddr,
        now: Instant,
    ) -> Result<ChallengeResponse> {
        let peer = validate::peer_id("peer_id", &req.peer_id)?;
        let nonce = lock(&self.challenges).issue(&peer, remote.ip(), now);
        Ok(ChallengeResponse { nonce, valid_seconds: crate::proof::VALID_FOR.as_secs() as u32 })
    }

    /// Checks that `req` (validated as `announce`) was signed by its PeerId's key over a fresh
    /// challenge of this directory for its IP, and uses the challenge up. Call before the
    /// connect-back and before [`Directory::announce`]: an Announce that fails here is refused
    /// (UNAUTHENTICATED) without touching the peer's session or sources.
    pub fn check_proof(&self, req: &AnnounceRequest, announce: &ValidAnnounce, now: Instant) -> Result<()> {
        let checked = lock(&self.challenges).check(&announce.peer, announce.address.ip(), req, now);
        checked.map_err(|e| {
            tracing::info!(peer = %announce.peer, address = %announce.address, reason = %e, "announce refused: no proof of the peer's key");
            match e {
                ProofError::Busy => DirectoryError::ResourceExhausted(e.to_string()),
                e => DirectoryError::Unauthenticated(e.to_string()),
            }
        })
    }

    /// Starts a session for `announce`. `reachable` is the verdict of the connect-back check of
    /// `announce.address`: only a reachable peer's files count as online and only a reachable
    /// peer is handed out by Locate; an unreachable one gets its session all the same.
    pub fn announce(
        &self,
        announce: ValidAnnounce,
        reach: impl Into<crate::presence::Reach>,
        now: Instant,
    ) -> Result<AnnounceResponse> {
        let reach = reach.into();
        let reachable = reach != crate::presence::Reach::Unreachable;
        let ValidAnnounce { peer, address, free_upload_slots, local } = announce;
        let token = new_token()?;

        let _m = lock(&self.membership);
        // Checked again under `membership`: a ban made while this Announce's connect-back ran
        // must not let it in.
        if let Some(refusal) = self.ban_refusal(&peer, address.ip(), now_unix_ms()) {
            return Err(DirectoryError::PermissionDenied(refusal));
        }
        self.sweep(now)?;
        self.check_peers_per_ip(&peer, address.ip(), now)?;
        let stored = self.catalog.touch_peer(&peer, &address.to_string())?;
        let outcome = {
            let mut presence = lock(&self.presence);
            let outcome = presence.announce(peer, address, free_upload_slots, reach, token.clone(), now);
            presence.set_local_address(&peer, local);
            outcome
        };
        let AnnounceOutcome { came_online, was_source, is_source } = outcome;
        if was_source != is_source {
            self.apply_peer_files(&peer, is_source)?;
        }
        if came_online || was_source != is_source {
            tracing::info!(peer = %peer, %address, reachable, files = stored.count, "peer online");
        }
        Ok(AnnounceResponse {
            session_token: token,
            lease_seconds: self.config.lease_seconds,
            heartbeat_interval_seconds: self.config.heartbeat_seconds,
            known_digest: stored.digest().as_bytes().to_vec(),
            known_count: stored.count,
            observed_address: address.to_string(),
            reachable: reach == crate::presence::Reach::Direct,
            introducible: reach == crate::presence::Reach::Introduced,
            relayed: reach == crate::presence::Reach::Relayed,
            // The service adds its rendezvous endpoints; the domain knows nothing of sockets.
            ..Default::default()
        })
    }

    /// Refuses a peer that would be one too many online from `ip` (`limits.max_peers_per_ip`;
    /// loopback is exempt while `limits.exempt_loopback`). Checked under `membership`, so
    /// concurrent Announces cannot slip past it together; a peer already online may re-announce.
    fn check_peers_per_ip(&self, peer: &PeerId, ip: IpAddr, now: Instant) -> Result<()> {
        let limits = &self.config.limits;
        if limits.max_peers_per_ip == 0 || !limits.applies_to(ip) {
            return Ok(());
        }
        let others = lock(&self.presence).live_peers_at(ip, peer, now);
        if others >= limits.max_peers_per_ip as usize {
            return Err(DirectoryError::ResourceExhausted(format!(
                "{others} peers are already online from {ip}; the limit is {} per IP address",
                limits.max_peers_per_ip
            )));
        }
        Ok(())
    }

    /// Leases that ran out since the directory started.
    pub fn leases_expired(&self) -> u64 {
        self.leases_expired.load(Ordering::Relaxed)
    }

    /// Bytes of the search index on disk.
    pub fn index_disk_bytes(&self) -> u64 {
        self.index.disk_bytes()
    }

    /// The peer of a live session, and whether it is a source (reachable).
    fn session(&self, token: &str, now: Instant) -> Result<(PeerId, bool)> {
        lock(&self.presence).session(token, now).ok_or_else(|| {
            DirectoryError::Unauthenticated("unknown or expired session token; announce again".into())
        })
    }

    /// Applies a share-list change for a live session. The caller flushes the catalog before
    /// acknowledging.
    fn change_shares(
        &self,
        token: &str,
        reset: bool,
        added: &[SharedFile],
        removed: &[Vec<u8>],
        now: Instant,
    ) -> Result<(PeerId, PublishOutcome)> {
        let additions = validate::additions(added)?;
        let removed = validate::content_ids("removed", removed)?;
        let _m = lock(&self.membership);
        self.sweep(now)?;
        let (peer, is_source) = self.session(token, now)?;
        let outcome = {
            let _storage = exclusive(&self.storage);
            self.catalog.publish(&peer, reset, &additions, &removed, MAX_FILES_PER_PEER)?
        };
        self.files_total.fetch_add(outcome.new_files as u64, Ordering::Relaxed);
        let mut online = self.online_mut();
        let mut hints = lock(&self.hints);
        for &SourceChange { key, id, before, after } in &outcome.changes {
            // The catalog keeps every peer's list; only a reachable peer's files are online.
            if before.is_some() {
                if is_source && let Some((was, now)) = online.remove(key, &id, &peer) {
                    hints.sources_changed(&id, was, now, holders(&online, &id), None);
                }
                self.sources_total.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(complete) = after {
                if is_source {
                    let (was, now) = online.add(key, &id, peer, complete);
                    hints.sources_changed(&id, was, now, holders(&online, &id), Some(peer));
                }
                self.sources_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok((peer, outcome))
    }

    pub fn publish(&self, req: PublishRequest, now: Instant) -> Result<PublishResponse> {
        if req.session_token.is_empty() {
            return Err(DirectoryError::Unauthenticated("session_token is missing; announce first".into()));
        }
        let (_, outcome) =
            self.change_shares(&req.session_token, req.reset, &req.added, &req.removed, now)?;
        Ok(PublishResponse { known_digest: outcome.peer.digest, known_count: outcome.peer.count })
    }

    /// Whether `peer` has a live session (its lease has not expired).
    pub fn has_session(&self, peer: &PeerId, now: Instant) -> bool {
        lock(&self.presence).is_online(peer, now)
    }

    pub fn heartbeat(&self, req: HeartbeatRequest, now: Instant) -> Result<HeartbeatResponse> {
        let peer =
            lock(&self.presence).heartbeat(&req.session_token, req.free_upload_slots, now).ok_or_else(
                || DirectoryError::Unauthenticated("unknown or expired session token; announce again".into()),
            )?;
        let (hints, more_hints) = self.rarity_hints(&peer, now);
        Ok(HeartbeatResponse { lease_seconds: self.config.lease_seconds, hints, more_hints })
    }

    /// The hints waiting for `peer`, with each file's counts as they are now.
    fn rarity_hints(&self, peer: &PeerId, now: Instant) -> (Vec<RarityHint>, bool) {
        let Taken { files, more } = lock(&self.hints).take(peer);
        if files.is_empty() {
            return (Vec::new(), more);
        }
        let counted: Vec<(ContentId, Counts)> = {
            let online = self.online();
            files.into_iter().map(|id| (id, online.counts_of(&id))).collect()
        };
        let mut demand = lock(&self.hints);
        let hints = counted
            .into_iter()
            .map(|(id, counts)| RarityHint {
                demand: demand.demand(&id, now),
                content_id: id.to_vec(),
                online_sources: counts.online,
                complete_sources: counts.complete,
            })
            .collect();
        (hints, more)
    }

    /// Hints sent and dropped since start, and waiting now (metrics).
    pub fn hint_counters(&self) -> (u64, u64, usize) {
        lock(&self.hints).counters()
    }

    pub fn withdraw(&self, req: WithdrawRequest, now: Instant) -> Result<WithdrawResponse> {
        let (_, outcome) = self.change_shares(&req.session_token, false, &[], &req.content_ids, now)?;
        if req.go_offline {
            let _m = lock(&self.membership);
            // Taken out even if its lease ran out since `change_shares` swept: its files must
            // stop counting now, as the sweep would no longer see it.
            let left = lock(&self.presence).leave(&req.session_token);
            if let Some(Departed { peer, was_source }) = left {
                if was_source {
                    self.apply_peer_files(&peer, false)?;
                }
                tracing::info!(peer = %peer, "peer went offline");
            }
        }
        Ok(WithdrawResponse { known_digest: outcome.peer.digest, known_count: outcome.peer.count })
    }

    pub fn search(&self, req: SearchRequest) -> Result<SearchResponse> {
        let query = validate::query(&req.query)?;
        let (offset, size) = validate::page(req.page, req.page_size)?;
        let f = req.filters.unwrap_or_default();
        validate::media_kind(f.media_kind)?;
        let filters = IndexFilters {
            media_kind: f.media_kind,
            min_size: f.min_size,
            max_size: f.max_size,
            min_duration_ms: f.min_duration_ms,
            max_duration_ms: f.max_duration_ms,
            min_bitrate_kbps: f.min_bitrate_kbps,
        };
        let min_online = f.min_online_sources.unwrap_or(1);
        let hits = {
            let counts = self.online();
            let weight = |key: u64| {
                let c = counts.get(key);
                if c.online < min_online || (f.complete_only && c.complete == 0) {
                    return None;
                }
                Some(source_weight(c.online, c.complete > 0))
            };
            let max_weight = source_weight(counts.most_online(), true);
            let hits = self.index.search_bounded(query, &filters, offset, size + 1, &weight, max_weight)?;
            hits.into_iter().map(|hit| (hit, counts.get(hit.key))).collect::<Vec<_>>()
        };
        let has_more = hits.len() > size;
        let mut out = Vec::with_capacity(size);
        let _storage = shared(&self.storage);
        for (hit, counts) in hits.into_iter().take(size) {
            // One read per hit: the index knows the content id. The key check only matters if
            // the index ever disagreed with the catalog; such a hit is left out.
            if let Some(StoredFile { key, info: Some(file), .. }) = self.catalog.file(&hit.content_id)?
                && key == hit.key
            {
                out.push(SearchHit {
                    file: Some(file),
                    online_sources: counts.online,
                    complete_sources: counts.complete,
                    score: hit.score,
                });
            }
        }
        Ok(SearchResponse { hits: crate::grouping::group_copies(out), has_more })
    }

    /// Answers a Locate in full, however many online sources the file has. Memory only, but
    /// O(sources): a file with many is best located on the blocking pool.
    pub fn locate(
        &self,
        req: &LocateRequest,
        remote: Option<SocketAddr>,
        now: Instant,
    ) -> Result<LocateResponse> {
        let ask = LocateAsk::new(req)?;
        let sources = copy_sources(&self.online(), &ask.id, usize::MAX).unwrap_or_default();
        self.count_ask(&ask, &sources, now);
        Ok(self.rank_sources(&ask, sources, remote, now))
    }

    /// Answers a Locate if that is quick: the file has at most `INLINE_LOCATE_SOURCES` online
    /// sources, and no writer holds or waits for the online sources (a Publish or Announce
    /// waits for the searches reading them, a millisecond or more). `Ok(None)` means "not
    /// quick": call [`Directory::locate`] on the blocking pool instead. Most files have a
    /// handful of sources, so most Locates skip the hand-off to another thread, which costs
    /// more than they do. Neither touches storage: the online sources are in memory.
    pub fn try_locate_quickly(
        &self,
        req: &LocateRequest,
        remote: Option<SocketAddr>,
        now: Instant,
    ) -> Result<Option<LocateResponse>> {
        let ask = LocateAsk::new(req)?;
        let online = match self.online.try_read() {
            Ok(online) => Some(online),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let sources = online.and_then(|online| copy_sources(&online, &ask.id, INLINE_LOCATE_SOURCES));
        Ok(sources.map(|sources| {
            self.count_ask(&ask, &sources, now);
            self.rank_sources(&ask, sources, remote, now)
        }))
    }

    /// Counts a Locate as demand for its file (a holder asking for its own file is not demand).
    fn count_ask(&self, ask: &LocateAsk, sources: &[OnlineSource], now: Instant) {
        if ask.asker.is_some_and(|asker| sources.iter().any(|(p, _)| *p == asker)) {
            return;
        }
        lock(&self.hints).asked(&ask.id, sources.iter().map(|(p, _)| p), now);
    }

    /// The online, reachable ones of `sources`, best first for the asker.
    fn rank_sources(
        &self,
        ask: &LocateAsk,
        sources: Vec<(PeerId, bool)>,
        remote: Option<SocketAddr>,
        now: Instant,
    ) -> LocateResponse {
        let candidates: Vec<Candidate> = {
            let presence = lock(&self.presence);
            sources
                .into_iter()
                .filter(|(peer, _)| Some(*peer) != ask.asker)
                .filter_map(|(peer, complete)| {
                    // Only peers that passed the connect-back check at their last Announce.
                    let lease = presence.source(&peer, now)?;
                    Some(Candidate {
                        peer,
                        address: lease.address,
                        complete,
                        free_upload_slots: lease.free_upload_slots,
                        since_last_seen: now.saturating_duration_since(lease.last_seen),
                        reach: lease.reach,
                        local: lease.local,
                    })
                })
                .collect()
        };
        let asker_ip: Option<IpAddr> = remote.map(|r| r.ip().to_canonical());
        let ranked = ranking::rank(asker_ip, candidates, ask.max as usize);
        let sources = ranked
            .into_iter()
            .map(|mut c| {
                // Behind the same public IP as the asker: meet on the LAN, no hairpin needed.
                if let Some(local) = c.local.filter(|_| Some(c.address.ip()) == asker_ip) {
                    (c.address, c.reach) = (local, crate::presence::Reach::Direct);
                }
                c
            })
            .map(|c| Source {
                peer_id: c.peer.to_vec(),
                address: c.address.to_string(),
                complete: c.complete,
                free_upload_slots: c.free_upload_slots,
                last_seen_ms_ago: c.since_last_seen.as_millis() as u64,
                reach: match c.reach {
                    crate::presence::Reach::Introduced => Reach::Introduction,
                    crate::presence::Reach::Relayed => Reach::Relay,
                    _ => Reach::Direct,
                }
                .into(),
            })
            .collect();
        LocateResponse { sources }
    }

    pub fn get_file(&self, req: GetFileRequest) -> Result<GetFileResponse> {
        let id = validate::content_id("content_id", &req.content_id)?;
        let file = {
            let _storage = shared(&self.storage);
            self.catalog.file(&id)?
        }
        .ok_or_else(|| DirectoryError::NotFound(format!("no file with content id {id}")))?;
        let counts = self.online().get(file.key);
        Ok(GetFileResponse {
            file: file.info,
            online_sources: counts.online,
            complete_sources: counts.complete,
            first_seen_unix_ms: file.first_seen_unix_ms,
        })
    }

    pub fn stats(&self, now: Instant) -> Result<StatsResponse> {
        use crate::presence::Reach as R;
        let (online_peers, by_reach) = {
            let presence = lock(&self.presence);
            let by_reach = [R::Direct, R::Introduced, R::Relayed, R::Unreachable].map(|r| presence.count(r));
            (presence.len() as u64, by_reach)
        };
        let _ = now;
        Ok(StatsResponse {
            peers_direct: by_reach[0],
            peers_introduced: by_reach[1],
            peers_relayed: by_reach[2],
            peers_unreachable: by_reach[3],
            files: self.files_total.load(Ordering::Relaxed),
            online_peers,
            known_peers: self.catalog.peer_count()?,
            sources: self.sources_total.load(Ordering::Relaxed),
            indexed_documents: self.index.num_docs(),
            index_segments: u32::try_from(self.index.segment_count()).unwrap_or(u32::MAX),
            uptime_seconds: self.started.elapsed().as_secs(),
        })
    }

    /// One indexing round: feeds up to a batch of new catalog entries to the index and commits.
    /// Returns how many were indexed. Blocking.
    pub fn index_pending(&self) -> Result<usize> {
        let files = {
            let _storage = shared(&self.storage);
            self.catalog.unindexed(INDEX_BATCH)?
        };
        if files.is_empty() {
            return Ok(0);
        }
        let docs: Vec<IndexDoc<'_>> = files
            .iter()
            .filter_map(|f| {
                let info = f.info.as_ref()?;
                // Checked at Publish; a record without a valid id is not searchable.
                let content_id = ContentId::from_slice(&info.content_id).ok()?;
                Some(IndexDoc {
                    key: f.key,
                    content_id,
                    title: &info.title,
                    artist: &info.artist,
                    album: &info.album,
                    file_name: &info.file_name,
                    media_kind: info.media_kind,
                    size: info.size,
                    duration_ms: info.duration_ms,
                    bitrate_kbps: info.bitrate_kbps,
                })
            })
            .collect();
        let started = Instant::now();
        self.index.upsert(&docs)?;
        self.index.commit()?;
        {
            let _storage = shared(&self.storage);
            self.catalog.mark_indexed(files.iter().map(|f| f.key))?;
        }
        tracing::debug!(docs = files.len(), elapsed = ?started.elapsed(), "index commit");
        Ok(files.len())
    }

    /// Segments the search index has now (each one costs every search a set-up).
    pub fn index_segments(&self) -> usize {
        self.index.segment_count()
    }

    /// Merges the search index into one segment (see `index::compaction` for when). Blocking
    /// for the whole merge; searches and indexing go on meanwhile. False if there was nothing
    /// to merge or a background merge got in the way.
    pub fn compact_index(&self) -> Result<bool> {
        Ok(self.index.merge_all()?)
    }

    /// Indexes until nothing is pending (start-up and shutdown).
    pub fn index_all_pending(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.index_pending()?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Makes every acknowledged change durable (fsync). Blocking; concurrent flushes share the
    /// work, and none runs while a publish transaction does (see the module doc).
    pub fn flush_blocking(&self) -> Result<()> {
        let _storage = shared(&self.storage);
        Ok(self.catalog.flush_blocking()?)
    }
}

#[path = "directory_admin.rs"]
mod admin_ops;
pub use admin_ops::{BanOutcome, PeerSummary};

#[cfg(test)]
#[path = "directory_tests.rs"]
mod tests;

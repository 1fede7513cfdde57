//! The directory's operator methods (`Admin` service): online peers, bans, removing a file.
//! A child module of `directory`, so it shares its locks and their order: `membership` first
//! for anything that changes who is online with what, then `presence`, then `online`;
//! `bans` is a leaf, held only for a lookup or one change.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quaver_shared::{ContentId, PeerId};

use super::{Directory, exclusive, lock, shared};
use crate::bans::{Ban, BanError, BanTarget, Bans};
use crate::catalog::{Catalog, RemovedFile, StoredBan, now_unix_ms};
use crate::error::{DirectoryError, Result, invalid};
use crate::presence::Departed;

/// One online peer as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    pub peer: PeerId,
    pub address: SocketAddr,
    pub reachable: bool,
    /// Files in its share list as the catalog holds it.
    pub files: u64,
    pub free_upload_slots: u32,
    pub since_last_seen: Duration,
}

/// What a ban did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanOutcome {
    pub ban: Ban,
    /// A ban of the same target was in force and this one replaced it.
    pub replaced: bool,
    /// Peers online under the ban, taken offline.
    pub dropped: Vec<PeerId>,
}

fn ban_error(e: BanError) -> DirectoryError {
    match e {
        BanError::Full => DirectoryError::ResourceExhausted(e.to_string()),
        e => invalid(e.to_string()),
    }
}

fn stored(ban: &Ban) -> StoredBan {
    StoredBan {
        until_unix_ms: ban.until_unix_ms,
        created_unix_ms: ban.created_unix_ms,
        reason: ban.reason.clone(),
    }
}

/// The bans stored in `catalog` that are still in force at `now_ms`; run-out ones are deleted,
/// and a record this version cannot read is logged and left alone.
pub(super) fn load_bans(catalog: &Catalog, now_ms: u64) -> Result<Bans> {
    let mut bans = Bans::default();
    for (key, record) in catalog.bans()? {
        let Some(target) = BanTarget::from_key(&key) else {
            tracing::warn!(key = %String::from_utf8_lossy(&key), "unreadable ban record; ignored");
            continue;
        };
        let ban = Ban {
            target,
            until_unix_ms: record.until_unix_ms,
            created_unix_ms: record.created_unix_ms,
            reason: record.reason,
        };
        if !ban.in_force(now_ms) {
            catalog.delete_ban(&key)?;
            continue;
        }
        bans.insert(ban, now_ms).map_err(ban_error)?;
    }
    if !bans.is_empty() {
        tracing::info!(bans = bans.len(), "bans in force");
    }
    Ok(bans)
}

impl Directory {
    /// Why `peer` announcing from `ip` is refused at `now_ms`, if a ban says so.
    pub fn ban_refusal(&self, peer: &PeerId, ip: IpAddr, now_ms: u64) -> Option<String> {
        lock(&self.bans).refusing(peer, ip, now_ms).map(Ban::refusal)
    }

    /// The peers online at `now`, in PeerId order after `after`, at most `limit`; and how many
    /// are online in all.
    pub fn online_peers(
        &self,
        after: Option<PeerId>,
        limit: usize,
        now: Instant,
    ) -> Result<(Vec<PeerSummary>, u64)> {
        let (mut leases, online) = {
            let presence = lock(&self.presence);
            let mut online = 0u64;
            let mut leases = Vec::new();
            for (peer, lease) in presence.live(now) {
                online += 1;
                if after.is_none_or(|a| *peer > a) {
                    leases.push((*peer, lease.clone()));
                }
            }
            (leases, online)
        };
        leases.sort_unstable_by_key(|(peer, _)| *peer);
        leases.truncate(limit);
        let _storage = shared(&self.storage);
        let peers = leases
            .into_iter()
            .map(|(peer, lease)| {
                Ok(PeerSummary {
                    peer,
                    address: lease.address,
                    reachable: lease.reachable(),
                    files: self.catalog.peer(&peer)?.map_or(0, |p| p.count),
                    free_upload_slots: lease.free_upload_slots,
                    since_last_seen: now.saturating_duration_since(lease.last_seen),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((peers, online))
    }

    /// Bans `ban.target` until `ban.until_unix_ms` (replacing a ban of the same target) and
    /// takes its peers online now offline at once. The caller flushes the catalog.
    pub fn ban(&self, ban: Ban, now: Instant) -> Result<BanOutcome> {
        let _m = lock(&self.membership);
        self.sweep(now)?;
        let old = lock(&self.bans).insert(ban.clone(), now_unix_ms()).map_err(ban_error)?;
        let saved = {
            let _storage = shared(&self.storage);
            self.catalog.put_ban(&ban.target.key(), &stored(&ban))
        };
        if let Err(e) = saved {
            // Not on disk, so not in force either: what the operator was told failed.
            let mut bans = lock(&self.bans);
            bans.remove(&ban.target);
            if let Some(old) = old {
                let _ = bans.insert(old, now_unix_ms());
            }
            return Err(e.into());
        }
        let banned: Vec<PeerId> = lock(&self.presence)
            .live(now)
            .filter(|(peer, lease)| ban.target.covers(peer, lease.address.ip()))
            .map(|(peer, _)| *peer)
            .collect();
        let mut dropped = Vec::with_capacity(banned.len());
        for peer in banned {
            let left = lock(&self.presence).leave_peer(&peer);
            if let Some(Departed { peer, was_source }) = left {
                if was_source {
                    self.apply_peer_files(&peer, false)?;
                }
                dropped.push(peer);
            }
        }
        tracing::info!(target = %ban.target, until = %crate::bans::utc(ban.until_unix_ms), reason = %ban.reason, dropped = dropped.len(), "ban");
        Ok(BanOutcome { ban, replaced: old.is_some_and(|b| b.in_force(now_unix_ms())), dropped })
    }

    /// Lifts the ban of `target`; false if none was in force. The caller flushes the catalog.
    pub fn unban(&self, target: &BanTarget) -> Result<bool> {
        let now_ms = now_unix_ms();
        let lifted = lock(&self.bans).remove(target);
        {
            let _storage = shared(&self.storage);
            self.catalog.delete_ban(&target.key())?;
        }
        let lifted = lifted.is_some_and(|b| b.in_force(now_ms));
        if lifted {
            tracing::info!(target = %target, "ban lifted");
        }
        Ok(lifted)
    }

    /// The bans in force, soonest end first; run-out ones are deleted on the way.
    pub fn bans(&self) -> Result<Vec<Ban>> {
        let now_ms = now_unix_ms();
        let (gone, list) = {
            let mut bans = lock(&self.bans);
            (bans.expire(now_ms), bans.list())
        };
        let _storage = shared(&self.storage);
        for ban in gone {
            self.catalog.delete_ban(&ban.target.key())?;
        }
        Ok(list)
    }

    /// Deletes file `id` from the catalog, the search index and the online sources; returns
    /// how many peers' share lists held it, or `None` if the catalog has no such file. Search,
    /// GetFile and Locate stop finding it when this returns (a search checks each hit against
    /// the catalog, and the index commit follows). The caller flushes the catalog.
    pub fn remove_file(&self, id: &ContentId, now: Instant) -> Result<Option<usize>> {
        let _m = lock(&self.membership);
        self.sweep(now)?;
        let removed = {
            let _storage = exclusive(&self.storage);
            self.catalog.remove_file(id)?
        };
        let Some(RemovedFile { key, sources }) = removed else { return Ok(None) };
        self.files_total.fetch_sub(1, Ordering::Relaxed);
        self.sources_total.fetch_sub(sources.len() as u64, Ordering::Relaxed);
        {
            // Unreachable holders were never listed: removing them is a no-op.
            let mut online = self.online_mut();
            for (peer, _) in &sources {
                online.remove(key, id, peer);
            }
        }
        self.index.delete(&[key]);
        self.index.commit()?;
        tracing::info!(content_id = %id, sources = sources.len(), "file removed from the catalog");
        Ok(Some(sources.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bans_load_again_and_run_out_ones_are_deleted() {
        let catalog = Catalog::temporary().unwrap();
        let now = now_unix_ms();
        let live = Ban::new(BanTarget::parse("10.0.0.0/8").unwrap(), 60, "x".into(), now).unwrap();
        let old =
            Ban::new(BanTarget::Peer(PeerId::from_array([1; 32])), 1, String::new(), now - 5000).unwrap();
        catalog.put_ban(&live.target.key(), &stored(&live)).unwrap();
        catalog.put_ban(&old.target.key(), &stored(&old)).unwrap();
        catalog.put_ban(b"?junk", &stored(&live)).unwrap();
        let bans = load_bans(&catalog, now).unwrap();
        assert_eq!(bans.list(), vec![live]);
        assert_eq!(
            catalog.bans().unwrap().len(),
            2,
            "the run-out ban is gone, the unreadable one left alone"
        );
    }
}

//! Which online peers hold each file, kept in memory so that search ranking and Locate never
//! touch storage.
//!
//! Two views of the same facts, each shaped for its reader:
//! - `counts`, by catalog key: how many online (and complete) sources a file has. Search looks
//!   up every matching document here, so the entries are small and the hash is Fx (the keys
//!   are the directory's own ids, not chosen by clients: no collision attack to resist).
//! - `sources`, by content id: who those sources are, for Locate. Content ids come from
//!   peers, so this map keeps std's keyed SipHash: a peer cannot publish ids that collide.
//!
//! The directory changes both whenever a peer comes online, goes offline, or changes its share
//! list while online. Invariant: `counts[key]` equals the length and complete entries of
//! `sources[id]` for the file's key and id, and neither holds a file without an online source.
//! This module must never be the source of truth: after a restart it starts empty and fills as
//! peers announce.

use std::collections::HashMap;

use quaver_shared::{ContentId, PeerId};
use rustc_hash::FxHashMap;

/// Online sources of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub online: u32,
    pub complete: u32,
}

/// One online source of a file: the peer, and whether it holds the whole file.
pub type OnlineSource = (PeerId, bool);

#[derive(Default)]
pub struct OnlineSources {
    counts: FxHashMap<u64, Counts>,
    sources: HashMap<ContentId, Vec<OnlineSource>>,
    /// The most online sources any file has had since start: never lowered, so it bounds every
    /// current count (search uses it to bound ranking weights; see `most_online`).
    most_online: u32,
}

impl OnlineSources {
    pub fn get(&self, key: u64) -> Counts {
        self.counts.get(&key).copied().unwrap_or_default()
    }

    /// The counts of a file known by its content id (the `counts` view is by catalog key).
    pub fn counts_of(&self, id: &ContentId) -> Counts {
        let sources = self.sources(id);
        let complete = sources.iter().filter(|(_, complete)| *complete).count();
        Counts { online: sources.len() as u32, complete: complete as u32 }
    }

    /// The online sources of a file (none if it has none, or is unknown).
    pub fn sources(&self, id: &ContentId) -> &[OnlineSource] {
        self.sources.get(id).map_or(&[], Vec::as_slice)
    }

    /// An online `peer` started holding file `key` / `id` (`complete` or partial). A peer
    /// already listed for the file is not listed twice: its entry takes the new `complete`.
    /// Returns the file's counts before and after.
    pub fn add(&mut self, key: u64, id: &ContentId, peer: PeerId, complete: bool) -> (Counts, Counts) {
        let before = self.get(key);
        if self.sources.get(id).is_some_and(|list| list.iter().any(|(p, _)| *p == peer)) {
            self.remove(key, id, &peer);
        }
        // Most files have one source: a list starts with room for exactly one.
        self.sources.entry(*id).or_insert_with(|| Vec::with_capacity(1)).push((peer, complete));
        let c = self.counts.entry(key).or_default();
        c.online += 1;
        c.complete += u32::from(complete);
        self.most_online = self.most_online.max(c.online);
        (before, *c)
    }

    /// An online `peer` stopped holding file `key` / `id`, or went offline. Returns the file's
    /// counts before and after; `None` (nothing changed) if it was not listed.
    pub fn remove(&mut self, key: u64, id: &ContentId, peer: &PeerId) -> Option<(Counts, Counts)> {
        let before = self.get(key);
        let list = self.sources.get_mut(id)?;
        let at = list.iter().position(|(p, _)| p == peer)?;
        let (_, complete) = list.swap_remove(at);
        if list.is_empty() {
            self.sources.remove(id);
        }
        if let Some(c) = self.counts.get_mut(&key) {
            c.online = c.online.saturating_sub(1);
            c.complete = c.complete.saturating_sub(u32::from(complete));
            if c.online == 0 {
                self.counts.remove(&key);
            }
        }
        Some((before, self.get(key)))
    }

    /// At least the online count of every file (the highest any file has reached since start).
    /// Kept cheap rather than exact: lowering it would need a scan when the top file loses a
    /// source, and a loose bound only makes search skip fewer documents.
    pub fn most_online(&self) -> u32 {
        self.most_online
    }

    /// Files with at least one online source.
    pub fn files_online(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_slice(&[n; 32]).unwrap()
    }

    fn listed(o: &OnlineSources, id: &ContentId) -> Vec<OnlineSource> {
        let mut list = o.sources(id).to_vec();
        list.sort();
        list
    }

    #[test]
    fn counts_and_sources_follow_peers_and_vanish_at_zero() {
        let mut o = OnlineSources::default();
        let id = ContentId::of_bytes(b"song");
        o.add(7, &id, peer(1), true);
        o.add(7, &id, peer(2), false);
        assert_eq!(o.get(7), Counts { online: 2, complete: 1 });
        assert_eq!(listed(&o, &id), vec![(peer(1), true), (peer(2), false)]);
        o.remove(7, &id, &peer(1));
        assert_eq!(o.get(7), Counts { online: 1, complete: 0 });
        assert_eq!(listed(&o, &id), vec![(peer(2), false)]);
        o.remove(7, &id, &peer(2));
        assert_eq!(o.files_online(), 0);
        assert!(o.sources(&id).is_empty());
        assert!(o.sources.is_empty(), "an empty list is dropped, not kept");
        o.remove(7, &id, &peer(2));
        assert_eq!(o.get(7), Counts::default());
    }

    #[test]
    fn a_peer_is_listed_once_with_its_latest_completeness() {
        let mut o = OnlineSources::default();
        let id = ContentId::of_bytes(b"song");
        o.add(1, &id, peer(1), false);
        o.add(1, &id, peer(1), true);
        assert_eq!(o.get(1), Counts { online: 1, complete: 1 });
        assert_eq!(listed(&o, &id), vec![(peer(1), true)]);
    }

    #[test]
    fn removing_an_unlisted_peer_changes_nothing() {
        let mut o = OnlineSources::default();
        let id = ContentId::of_bytes(b"song");
        o.add(1, &id, peer(1), true);
        o.remove(1, &id, &peer(9));
        o.remove(1, &ContentId::of_bytes(b"other"), &peer(1));
        assert_eq!(o.get(1), Counts { online: 1, complete: 1 });
        assert_eq!(listed(&o, &id), vec![(peer(1), true)]);
    }

    #[test]
    fn most_online_bounds_every_count() {
        let mut o = OnlineSources::default();
        let (a, b) = (ContentId::of_bytes(b"a"), ContentId::of_bytes(b"b"));
        assert_eq!(o.most_online(), 0);
        for n in 0..3 {
            o.add(1, &a, peer(n), false);
        }
        o.add(2, &b, peer(0), true);
        assert_eq!(o.most_online(), 3);
        o.remove(1, &a, &peer(0));
        assert!(o.most_online() >= o.get(1).online.max(o.get(2).online));
        assert_eq!(o.most_online(), 3, "never lowered");
    }
}

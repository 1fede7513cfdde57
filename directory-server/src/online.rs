//! How many online peers hold each file, kept in memory so that search ranking and filtering
//! never touch storage.
//!
//! Owns only counters; the directory changes them whenever a peer comes online, goes offline,
//! or changes its share list while online. It must never be the source of truth: after a
//! restart it starts empty and fills as peers announce.

use rustc_hash::FxHashMap;

/// Online sources of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub online: u32,
    pub complete: u32,
}

/// Keyed by catalog key. Search looks up every matching document here, so the hash is Fx
/// rather than SipHash: the keys are the directory's own ids, not chosen by clients, so there
/// is no collision attack to resist.
#[derive(Default)]
pub struct OnlineCounts {
    by_key: FxHashMap<u64, Counts>,
    /// The most online sources any file has had since start: never lowered, so it bounds every
    /// current count (search uses it to bound ranking weights; see `most_online`).
    most_online: u32,
}

impl OnlineCounts {
    pub fn get(&self, key: u64) -> Counts {
        self.by_key.get(&key).copied().unwrap_or_default()
    }

    /// An online peer started holding a file (`complete` or partial).
    pub fn add(&mut self, key: u64, complete: bool) {
        let c = self.by_key.entry(key).or_default();
        c.online += 1;
        c.complete += u32::from(complete);
        self.most_online = self.most_online.max(c.online);
    }

    /// An online peer stopped holding a file, or went offline.
    pub fn remove(&mut self, key: u64, complete: bool) {
        if let Some(c) = self.by_key.get_mut(&key) {
            c.online = c.online.saturating_sub(1);
            c.complete = c.complete.saturating_sub(u32::from(complete));
            if c.online == 0 {
                self.by_key.remove(&key);
            }
        }
    }

    /// At least the online count of every file (the highest any file has reached since start).
    /// Kept cheap rather than exact: lowering it would need a scan when the top file loses a
    /// source, and a loose bound only makes search skip fewer documents.
    pub fn most_online(&self) -> u32 {
        self.most_online
    }

    /// Files with at least one online source.
    pub fn files_online(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_peers_and_vanish_at_zero() {
        let mut c = OnlineCounts::default();
        c.add(7, true);
        c.add(7, false);
        assert_eq!(c.get(7), Counts { online: 2, complete: 1 });
        c.remove(7, true);
        assert_eq!(c.get(7), Counts { online: 1, complete: 0 });
        c.remove(7, false);
        assert_eq!(c.files_online(), 0);
        c.remove(7, false);
        assert_eq!(c.get(7), Counts::default());
    }

    #[test]
    fn most_online_bounds_every_count() {
        let mut c = OnlineCounts::default();
        assert_eq!(c.most_online(), 0);
        for _ in 0..3 {
            c.add(1, false);
        }
        c.add(2, true);
        assert_eq!(c.most_online(), 3);
        c.remove(1, false);
        assert!(c.most_online() >= c.get(1).online.max(c.get(2).online));
        assert_eq!(c.most_online(), 3, "never lowered");
    }
}

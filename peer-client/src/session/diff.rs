//! The share-list difference, sans-IO: a merge join of two strictly increasing streams of ids.
//!
//! `local` is what the node shares now, `remote` what the directory acknowledged last. Walking
//! both in order at once yields every id only `local` has (to add) and every id only `remote`
//! has (to remove), in increasing order, holding one id of each side at a time: a node sharing a
//! million files never needs either list in memory. Both inputs come from sled key ranges, so
//! they are strictly increasing; an input that is not gives a wrong answer, never a panic.
//!
//! Items are `Result`s because the inputs are storage iterators: the first error stops the
//! diff and is passed through.

use std::cmp::Ordering;
use std::iter::Peekable;

/// One difference between the local and the remote list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change<T> {
    /// In the local list only: publish it.
    Added(T),
    /// In the remote list only: withdraw it.
    Removed(T),
}

impl<T> Change<T> {
    pub fn id(&self) -> &T {
        match self {
            Change::Added(id) | Change::Removed(id) => id,
        }
    }
}

/// Iterator over the differences (see [`diff`]).
pub struct Diff<L: Iterator, R: Iterator> {
    local: Peekable<L>,
    remote: Peekable<R>,
    failed: bool,
}

/// The differences between two strictly increasing streams, in increasing id order.
pub fn diff<T, E, L, R>(local: L, remote: R) -> Diff<L::IntoIter, R::IntoIter>
where
    T: Ord,
    L: IntoIterator<Item = Result<T, E>>,
    R: IntoIterator<Item = Result<T, E>>,
{
    Diff { local: local.into_iter().peekable(), remote: remote.into_iter().peekable(), failed: false }
}

/// What the heads of both sides say, decided before either side is advanced.
enum Step {
    LocalError,
    RemoteError,
    Added,
    Removed,
    Same,
    Done,
}

impl<T, E, L, R> Iterator for Diff<L, R>
where
    T: Ord,
    L: Iterator<Item = Result<T, E>>,
    R: Iterator<Item = Result<T, E>>,
{
    type Item = Result<Change<T>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            let step = match (self.local.peek(), self.remote.peek()) {
                (Some(Err(_)), _) => Step::LocalError,
                (_, Some(Err(_))) => Step::RemoteError,
                (Some(Ok(l)), Some(Ok(r))) => match l.cmp(r) {
                    Ordering::Less => Step::Added,
                    Ordering::Greater => Step::Removed,
                    Ordering::Equal => Step::Same,
                },
                (Some(Ok(_)), None) => Step::Added,
                (None, Some(Ok(_))) => Step::Removed,
                (None, None) => Step::Done,
            };
            let item = match step {
                Step::LocalError => {
                    self.failed = true;
                    self.local.next().and_then(|r| r.err()).map(Err)
                }
                Step::RemoteError => {
                    self.failed = true;
                    self.remote.next().and_then(|r| r.err()).map(Err)
                }
                Step::Added => self.local.next().map(|r| r.map(Change::Added)),
                Step::Removed => self.remote.next().map(|r| r.map(Change::Removed)),
                Step::Same => {
                    self.local.next();
                    self.remote.next();
                    continue;
                }
                Step::Done => None,
            };
            return item;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    fn ok(ids: &[u32]) -> Vec<Result<u32, Infallible>> {
        ids.iter().copied().map(Ok).collect()
    }

    fn changes(local: &[u32], remote: &[u32]) -> Vec<Change<u32>> {
        diff(ok(local), ok(remote)).map(|c| c.unwrap_or_else(|e| match e {})).collect()
    }

    #[test]
    fn interleaved_lists() {
        use Change::*;
        assert_eq!(
            changes(&[1, 3, 4, 7, 9], &[2, 3, 5, 7, 8, 10]),
            vec![Added(1), Removed(2), Added(4), Removed(5), Removed(8), Added(9), Removed(10)]
        );
    }

    #[test]
    fn empty_and_equal_sides() {
        use Change::*;
        assert!(changes(&[], &[]).is_empty());
        assert!(changes(&[1, 2, 3], &[1, 2, 3]).is_empty());
        assert_eq!(changes(&[1, 2], &[]), vec![Added(1), Added(2)]);
        assert_eq!(changes(&[], &[1, 2]), vec![Removed(1), Removed(2)]);
    }

    #[test]
    fn an_error_on_either_side_is_passed_through_and_stops_the_diff() {
        let local = vec![Ok(1), Ok(2), Err("disk"), Ok(9)];
        let out: Vec<_> = diff(local, vec![Ok(2), Ok(5)]).collect();
        assert_eq!(out, vec![Ok(Change::Added(1)), Err("disk")]);

        let remote = vec![Ok(1), Err("tree")];
        let out: Vec<_> = diff(vec![Ok(1), Ok(3)], remote).collect();
        assert_eq!(out, vec![Err("tree")]);
    }

    #[test]
    fn pulls_lazily_one_id_at_a_time() {
        // An endless local stream: the diff must not try to read it all before answering.
        let local = (0u64..).map(|n| Ok::<_, Infallible>(n * 2));
        let remote = (0u64..).map(|n| Ok::<_, Infallible>(n * 3));
        let first: Vec<_> = diff(local, remote).take(4).map(|c| c.unwrap_or_else(|e| match e {})).collect();
        use Change::*;
        assert_eq!(first, vec![Added(2), Removed(3), Added(4), Added(8)]);
    }

    proptest! {
        #[test]
        fn matches_a_set_difference(
            local in proptest::collection::btree_set(0u16..400, 0..120),
            remote in proptest::collection::btree_set(0u16..400, 0..120),
        ) {
            let out: Vec<Change<u16>> = diff(
                local.iter().copied().map(Ok::<_, Infallible>),
                remote.iter().copied().map(Ok::<_, Infallible>),
            )
            .map(|c| c.unwrap_or_else(|e| match e {}))
            .collect();

            let l: HashSet<u16> = local.iter().copied().collect();
            let r: HashSet<u16> = remote.iter().copied().collect();
            let added: HashSet<u16> = out.iter().filter_map(|c| match c { Change::Added(x) => Some(*x), _ => None }).collect();
            let removed: HashSet<u16> = out.iter().filter_map(|c| match c { Change::Removed(x) => Some(*x), _ => None }).collect();
            prop_assert_eq!(&added, &l.difference(&r).copied().collect::<HashSet<_>>());
            prop_assert_eq!(&removed, &r.difference(&l).copied().collect::<HashSet<_>>());
            // Each change once, in increasing order.
            prop_assert_eq!(added.len() + removed.len(), out.len());
            prop_assert!(out.windows(2).all(|w| w[0].id() < w[1].id()));
            // Applying the diff to the remote list gives the local list.
            let mut applied: BTreeSet<u16> = remote.clone();
            for c in &out {
                match c {
                    Change::Added(x) => { applied.insert(*x); }
                    Change::Removed(x) => { applied.remove(x); }
                }
            }
            prop_assert_eq!(applied, local);
        }
    }
}

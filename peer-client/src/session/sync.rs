//! Bringing the directory's copy of the share list in line with the store.
//!
//! The directory reports the digest of what it holds (`known`). Three cases:
//! - `known` is the store's digest: nothing to send (the acknowledged set is brought up to date
//!   locally if it lagged);
//! - `known` is the digest of the acknowledged set: publish the [`diff`] between the store and
//!   that set;
//! - anything else (first contact, the directory lost data, another directory): forget the set
//!   and resend everything with `reset`.
//!
//! Each batch holds at most `MAX_BATCH_FILES` added and as many removed ids, and stays well
//! under the gRPC message bound. The acknowledged set is updated after every acknowledged
//! batch, and the directory's answer must then match its digest; if it does not, the list is
//! resent once, and a second disagreement is an error (the session reconnects).

use quaver_shared::directory::v1::{PublishRequest, SharedFile};
use quaver_shared::limits::{MAX_BATCH_FILES, MAX_GRPC_MESSAGE_BYTES};
use quaver_shared::{ContentId, ShareDigest};
use tokio::sync::watch;

use super::SessionError;
use super::diff::{Change, diff};
use super::worker::{End, Live, Worker, bounded, stop_requested};
use crate::store::{Published, Store, StoreError};

/// Most encoded bytes of files in one batch: half the directory's message bound, so a batch of
/// long names and tags still fits with room.
const MAX_BATCH_BYTES: usize = MAX_GRPC_MESSAGE_BYTES / 2;
/// Rounds of one sync: the store may change while a round runs; changes left after these
/// rounds are published at the next change or heartbeat.
const MAX_ROUNDS: usize = 4;

/// One batch of differences, in id order.
#[derive(Default)]
struct Batch {
    /// Files to publish (with metadata), and their ids.
    added: Vec<SharedFile>,
    added_ids: Vec<ContentId>,
    removed: Vec<ContentId>,
    /// The last id the batch looked at: the next batch starts after it.
    last: Option<ContentId>,
    /// No difference lies after `last`.
    exhausted: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.added_ids.is_empty() && self.removed.is_empty()
    }
}

/// The next batch of differences between the store and `published` after `after`. With
/// `with_info`, added ids come with their metadata (ids that left the store meanwhile are
/// skipped).
fn next_batch(
    store: &Store,
    published: &Published,
    after: Option<ContentId>,
    with_info: bool,
) -> Result<Batch, StoreError> {
    let mut batch = Batch::default();
    let mut bytes = 0usize;
    for change in diff(store.shared_ids_after(after.as_ref()), published.ids_after(after.as_ref())) {
        let change = change?;
        batch.last = Some(*change.id());
        match change {
            Change::Added(id) if with_info => {
                if let Some(info) = store.info(&id)? {
                    let file = SharedFile { info: Some(info), complete: true };
                    bytes += prost::Message::encoded_len(&file) + 8;
                    batch.added.push(file);
                    batch.added_ids.push(id);
                }
            }
            Change::Added(id) => batch.added_ids.push(id),
            Change::Removed(id) => {
                bytes += ContentId::LEN + 8;
                batch.removed.push(id);
            }
        }
        if batch.added_ids.len() >= MAX_BATCH_FILES
            || batch.removed.len() >= MAX_BATCH_FILES
            || bytes >= MAX_BATCH_BYTES
        {
            return Ok(batch);
        }
    }
    batch.exhausted = true;
    Ok(batch)
}

impl Worker {
    /// The acknowledged set for this directory and its digest, opened and computed on first use.
    async fn published(&mut self) -> Result<(Published, ShareDigest), SessionError> {
        if let (Some(published), Some(digest)) = (&self.published, self.remembered) {
            return Ok((published.clone(), digest));
        }
        let store = self.store.clone();
        let url = self.config.directory_url.clone();
        let (published, digest) = tokio::task::spawn_blocking(move || {
            let published = store.published(&url)?;
            let (digest, _) = published.summary()?;
            Ok::<_, StoreError>((published, digest))
        })
        .await??;
        self.published = Some(published.clone());
        self.remembered = Some(digest);
        Ok((published, digest))
    }

    /// Makes the directory hold the store's share list (see the module doc).
    pub(super) async fn sync(&mut self, live: &mut Live, stop: &watch::Receiver<bool>) -> Result<(), End> {
        let mut reset_done = false;
        for _ in 0..MAX_ROUNDS {
            let (_, remembered) = self.published().await?;
            let node = self.store.digest();
            if live.known == Some(node) {
                if remembered != node {
                    self.adopt_store().await?;
                }
                return Ok(());
            }
            let reset = live.known != Some(remembered);
            if reset {
                if reset_done {
                    return Err(SessionError::DigestMismatch.into());
                }
                reset_done = true;
                tracing::info!(directory = %self.config.directory_url, "sending the whole share list");
                let (published, _) = self.published().await?;
                tokio::task::spawn_blocking(move || published.clear()).await??;
                self.remembered = Some(ShareDigest::EMPTY);
                self.state.send_modify(|s| s.resets += 1);
            }
            self.publish_difference(live, reset, stop).await?;
            if live.known != self.remembered {
                tracing::warn!(
                    directory = %self.config.directory_url,
                    "the directory's digest differs from what it acknowledged; resending"
                );
            }
        }
        Ok(())
    }

    /// Publishes the difference between the store and the acknowledged set, batch by batch;
    /// with `reset`, the first batch (sent even when empty) makes the directory forget the
    /// rest. Returns early when a batch's answer disagrees with the acknowledged set.
    async fn publish_difference(
        &mut self,
        live: &mut Live,
        reset: bool,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), End> {
        let mut after = None;
        let mut first = true;
        loop {
            if stop_requested(stop) {
                return Err(End::Stop);
            }
            let (published, digest) = self.published().await?;
            let batch = {
                let (store, published) = (self.store.clone(), published.clone());
                tokio::task::spawn_blocking(move || next_batch(&store, &published, after, true)).await??
            };
            if batch.is_empty() && !(reset && first) {
                return Ok(());
            }
            let sent = (batch.added_ids.len() + batch.removed.len()) as u64;
            let request = PublishRequest {
                session_token: live.token.clone(),
                reset: reset && first,
                added: batch.added,
                removed: batch.removed.iter().map(ContentId::to_vec).collect(),
            };
            let answer = bounded("Publish", self.config.call_timeout, live.client.publish(request)).await?;
            let (added, removed) = (batch.added_ids, batch.removed);
            let remembered =
                tokio::task::spawn_blocking(move || published.apply(digest, &added, &removed)).await??;
            self.remembered = Some(remembered);
            live.known = ShareDigest::from_slice(&answer.known_digest);
            self.state.send_modify(|s| s.files_published += sent);
            tracing::debug!(files = sent, reset = reset && first, "published a batch");
            if live.known != Some(remembered) || batch.exhausted {
                return Ok(());
            }
            first = false;
            after = batch.last;
        }
    }

    /// The directory holds exactly the store's list, but the acknowledged set says otherwise
    /// (it was lost, or this is a known directory under a new url): make the set the store's.
    async fn adopt_store(&mut self) -> Result<(), End> {
        let mut after = None;
        loop {
            let (published, digest) = self.published().await?;
            let store = self.store.clone();
            let (batch, remembered) = tokio::task::spawn_blocking(move || {
                let batch = next_batch(&store, &published, after, false)?;
                let digest = published.apply(digest, &batch.added_ids, &batch.removed)?;
                Ok::<_, StoreError>((batch, digest))
            })
            .await??;
            self.remembered = Some(remembered);
            if batch.exhausted {
                return Ok(());
            }
            after = batch.last;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A store sharing `n` small files in a fresh folder.
    fn store_with(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            fs::write(dir.path().join(format!("song {i}.mp3")), format!("bytes of song {i}")).unwrap();
        }
        let store = Store::temporary().unwrap();
        store.add_folder(dir.path()).unwrap();
        store.rescan().unwrap();
        (dir, store)
    }

    fn all_batches(store: &Store, published: &Published) -> Vec<Batch> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let batch = next_batch(store, published, after, true).unwrap();
            after = batch.last;
            let done = batch.exhausted;
            out.push(batch);
            if done {
                return out;
            }
        }
    }

    #[test]
    fn batches_cover_the_difference_once_in_bounded_pieces() {
        let (dir, store) = store_with(MAX_BATCH_FILES + 5);
        let published = store.published("http://d").unwrap();
        let batches = all_batches(&store, &published);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].added.len(), MAX_BATCH_FILES);
        assert!(!batches[0].exhausted && batches[1].exhausted);
        assert_eq!(batches[1].added.len(), 5);
        let mut ids: Vec<ContentId> = batches.iter().flat_map(|b| b.added_ids.clone()).collect();
        let total = ids.len();
        ids.dedup();
        assert_eq!((ids.len(), total), (MAX_BATCH_FILES + 5, MAX_BATCH_FILES + 5));
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        for (file, id) in batches[0].added.iter().zip(&batches[0].added_ids) {
            assert_eq!(file.info.as_ref().unwrap().content_id, id.to_vec());
        }

        // Acknowledge everything, then change three files: the diff is exactly that.
        let mut digest = ShareDigest::EMPTY;
        for b in &batches {
            digest = published.apply(digest, &b.added_ids, &b.removed).unwrap();
        }
        assert_eq!(digest, store.digest());
        assert!(all_batches(&store, &published).iter().all(Batch::is_empty));

        fs::remove_file(dir.path().join("song 1.mp3")).unwrap();
        fs::remove_file(dir.path().join("song 2.mp3")).unwrap();
        fs::write(dir.path().join("new.mp3"), b"a new song").unwrap();
        store.rescan().unwrap();
        let batches = all_batches(&store, &published);
        let added: Vec<_> = batches.iter().flat_map(|b| b.added_ids.clone()).collect();
        let removed: Vec<_> = batches.iter().flat_map(|b| b.removed.clone()).collect();
        assert_eq!(added, vec![ContentId::of_bytes(b"a new song")]);
        let mut gone = vec![ContentId::of_bytes(b"bytes of song 1"), ContentId::of_bytes(b"bytes of song 2")];
        gone.sort();
        assert_eq!(removed, gone);
    }
}

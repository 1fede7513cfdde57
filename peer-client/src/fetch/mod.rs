//! Downloads: which block to fetch from which source (the sans-IO scheduler), and the task that
//! moves the bytes around it.
//!
//! - [`scheduler`], [`waiting`]: re-exported from the sans-IO `quaver-core`.
//! - [`verify`]: checks outboards and blocks against the content id; pure computation.
//! - [`partfile`]: the `.part` file and its persisted set of verified blocks.
//! - `buffers`: the download's bounded pool of block buffers, reused however a request ends.
//! - [`client`]: one request over a QUIC stream.
//! - [`download`]: the tokio task that drives a download's `Transfer` (`quaver_core`);
//!   `drive` does each of its actions and turns outcomes back into its events.

mod buffers;
pub mod client;
pub mod download;
mod drive;
pub mod partfile;
pub use quaver_core::{scheduler, waiting};
pub mod verify;

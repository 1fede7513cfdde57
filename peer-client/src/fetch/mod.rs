//! Downloads: which block to fetch from which source (the sans-IO scheduler), and the task that
//! moves the bytes around it.
//!
//! - [`scheduler`]: a pure state machine, events in, requests out; its private parts are
//!   `scheduler_blocks` (one byte of state per block), `scheduler_source` (a source's speed,
//!   window and backoff) and `scheduler_types` (plain data). None of them does I/O.
//! - [`verify`]: checks outboards and blocks against the content id; pure computation.
//! - [`partfile`]: the `.part` file and its persisted set of verified blocks.
//! - `buffers`: the download's bounded pool of block buffers, reused however a request ends.
//! - [`client`]: one request over a QUIC stream.
//! - [`download`]: the tokio task tying them together.
//! - [`waiting`]: how a download waits for sources (and for a BUSY source); sans-IO.

mod buffers;
pub mod client;
pub mod download;
pub mod partfile;
pub mod scheduler;
mod scheduler_blocks;
mod scheduler_source;
mod scheduler_types;
pub mod verify;
pub mod waiting;

#[cfg(test)]
mod scheduler_sim;
#[cfg(test)]
mod scheduler_tests;

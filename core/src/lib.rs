//! Quaver's sans-IO core: every rule of the peer protocol and of a download, with no runtime,
//! socket, file or clock. Time comes in as arguments (`now: Instant`), bytes as slices, and
//! what to do next goes out as values; the tokio code in `quaver-peer` only moves bytes and
//! time around it (the split quinn makes between `quinn-proto` and `quinn`).
//!
//! - [`ids`]: `ContentId` and `PeerId`, 32 bytes each, refused at the edge when malformed.
//! - [`wire`]: the peer protocol's framing and validated messages (its spec is at the top).
//! - [`scheduler`]: which block to ask which source for; private parts `scheduler_blocks`
//!   (one byte of state per block), `scheduler_source` (a source's speed, window, backoff) and
//!   `scheduler_types` (plain data).
//! - [`waiting`]: how long a download with no source keeps looking, and a BUSY source's retry.
//! - [`transfer`]: one download's whole policy: connects, outboard race, resume, requests,
//!   stalls, bans, lookups, finish. Events in, actions out.
//! - [`nat`]: a router's kind judged from what two rendezvous endpoints saw of one socket.
//! - [`seeding`]: a file's rarity and seed rank, demand counting, the weighted upload pacer and
//!   the user's seeding policy.
//!
//! Must never depend on tokio, quinn or the file system: the compiler keeps it pure.

pub mod ids;
pub mod nat;
pub mod scheduler;
mod scheduler_blocks;
mod scheduler_source;
mod scheduler_types;
pub mod seeding;
pub mod transfer;
pub mod waiting;
pub mod wire;

#[cfg(test)]
mod scheduler_sim;
#[cfg(test)]
mod scheduler_tests;
#[cfg(test)]
mod transfer_sim;
#[cfg(test)]
mod transfer_tests;

//! Seeding, sans-IO: which of a peer's files matter most to the network, and in what order its
//! upload goes to them.
//!
//! The directory knows each file's online sources exactly and counts how often it is asked for
//! ([`demand`]); it tells every holder of a file the file's [`rank::Rarity`] when that changes
//! class, and the holder serves by [`rank::SeedRank`] (a file's only online copy first, then
//! demand over supply, in the spirit of libtorrent's `seed_rank`), with [`pacer`] sharing a
//! capped upload between files by their rank's weight, and [`policy`] saying whether to serve
//! a file at all (`always`, `rare`, `never`). [`swarm_sim`] plays these against first come,
//! first served over weeks of churn in virtual time (`cargo bench --bench seeding_sim`).
//!
//! Must never read a clock or do I/O: time is an argument.

pub mod demand;
pub mod pacer;
pub mod policy;
pub mod rank;
pub mod swarm_sim;

pub use policy::SeedPolicy;
pub use rank::{Rarity, SeedRank};

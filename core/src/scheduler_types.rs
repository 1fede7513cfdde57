//! The scheduler's vocabulary: block indices, config, errors, outcomes and progress snapshots.
//!
//! Plain data, re-exported by [`super::scheduler`]; no logic beyond config checks, no I/O.

use super::scheduler_blocks::MAX_HOLDERS;
use std::fmt::Debug;
use std::time::Duration;

pub use super::scheduler_source::SourceStatus;

/// The index of a block: block `b` covers bytes `b × block_size ..` of the file.
pub type Block = u32;

/// The default block size: 16 chunk groups, one `GetRange` each. Big enough that per-request
/// overhead is small, small enough that a lost source strands little and the end phase is short.
pub const BLOCK_SIZE: u64 = 256 * 1024;

/// What identifies a source (a `PeerId` in the node, small integers in tests).
pub trait SourceKey: Copy + Ord + Debug {}
impl<T: Copy + Ord + Debug> SourceKey for T {}

/// Tuning. The defaults suit 256 KiB blocks over the internet.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// How long a source's queue of requests should take to drain.
    pub target_latency: Duration,
    pub min_in_flight: usize,
    pub max_in_flight: usize,
    /// Below this many usable sources, `needs_more_sources` says yes.
    pub want_sources: usize,
    /// Transient failures in a row that retire a source.
    pub max_failures: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Most sources one block may be in flight at (end phase); 1 turns duplicates off.
    pub max_holders: u8,
    /// How many times sooner a duplicate must be expected to finish to be worth its bandwidth.
    pub dup_advantage: f64,
    /// Bytes per second assumed for a source not measured yet (low: unproven sources should
    /// not look better than measured ones).
    pub unknown_bandwidth: f64,
    /// Weight of a new sample in the smoothed bandwidth (0..=1).
    pub ewma_weight: f64,
    /// A source with requests in flight that answers none of them for this long (or for as
    /// many block times at its measured rate as it has requests in flight, plus four, if
    /// longer) is stalled: idle sources copy its blocks, and [`Scheduler::stalled_sources`]
    /// reports it so the caller can drop it. A killed peer's connection only times out after
    /// the QUIC idle timeout; this is what keeps a download from waiting for that. Half a second
    /// is many block times of any source fast enough to matter, and a slower one gets its own,
    /// longer deadline.
    ///
    /// [`Scheduler::stalled_sources`]: super::scheduler::Scheduler::stalled_sources
    pub stall_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            target_latency: Duration::from_secs(1),
            min_in_flight: 2,
            max_in_flight: 32,
            want_sources: 3,
            max_failures: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_holders: 2,
            dup_advantage: 2.0,
            unknown_bandwidth: 64.0 * 1024.0,
            ewma_weight: 0.3,
            stall_after: Duration::from_millis(500),
        }
    }
}

/// Why a scheduler cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("block size {0} must be a positive multiple of 16 KiB and at most 1 MiB")]
    BlockSize(u64),
    #[error("a file of {file_size} bytes has more than 2^32 blocks")]
    TooManyBlocks { file_size: u64 },
    #[error("verified block {block} is past the last block (the file has {count})")]
    BlockOutOfRange { block: Block, count: usize },
    #[error("bad scheduler config: {0}")]
    Config(&'static str),
}

/// What became of a verified block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified<S> {
    /// The first verified copy: keep it. `cancel` lists sources that were fetching the same
    /// block (end-phase duplicates); the scheduler already forgot those requests, so stop them.
    Accepted { cancel: Vec<S> },
    /// Already verified from another source: drop these bytes.
    Late,
    /// The file has no such block.
    Unknown,
}

/// A snapshot for progress bars and status commands.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress<S> {
    pub file_size: u64,
    pub verified_bytes: u64,
    pub blocks: usize,
    pub verified_blocks: usize,
    /// Blocks in flight at one source or more.
    pub in_flight_blocks: usize,
    pub end_phase: bool,
    pub sources: Vec<SourceProgress<S>>,
}

/// One source in a [`Progress`] snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceProgress<S> {
    pub id: S,
    pub status: SourceStatus,
    /// Bytes of blocks whose first verified copy came from this source.
    pub bytes_verified: u64,
    pub blocks_verified: u64,
    pub in_flight: usize,
    /// Requests it may have in flight at its current speed.
    pub window: usize,
    /// Smoothed throughput, once measured.
    pub bytes_per_sec: Option<u64>,
    pub failures: u32,
}

pub(super) fn check_config(cfg: &SchedulerConfig) -> Result<(), SchedulerError> {
    let fails = [
        (cfg.min_in_flight == 0, "min_in_flight must be at least 1"),
        (cfg.max_in_flight < cfg.min_in_flight, "max_in_flight below min_in_flight"),
        (cfg.max_holders == 0 || cfg.max_holders > MAX_HOLDERS, "max_holders must be 1..=254"),
        (cfg.max_failures == 0, "max_failures must be at least 1"),
        (cfg.target_latency.is_zero(), "target_latency must be positive"),
        (!(cfg.dup_advantage >= 1.0 && cfg.dup_advantage.is_finite()), "dup_advantage must be >= 1"),
        (
            !(cfg.unknown_bandwidth > 0.0 && cfg.unknown_bandwidth.is_finite()),
            "unknown_bandwidth must be > 0",
        ),
        (!(cfg.ewma_weight > 0.0 && cfg.ewma_weight <= 1.0), "ewma_weight must be in (0, 1]"),
    ];
    match fails.into_iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(SchedulerError::Config(why)),
        None => Ok(()),
    }
}

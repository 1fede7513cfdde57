//! A seeding simulator in virtual time: does serving by rarity keep the long tail alive?
//!
//! `peers` peers with a capped upload share `files` files of `file_bytes` each. Time moves in
//! steps of one virtual minute ([`STEP`]) for `days` days; nothing here reads a clock, and the
//! same [`Config`] (seed included) gives the same [`Report`], bit for bit.
//!
//! - **Churn.** Peers alternate online and offline sessions of exponential length
//!   (`mean_online_hours`, `mean_offline_hours`), and leave for good after an exponential
//!   lifetime (`mean_lifetime_days`); a departed peer's slot is taken at once by a newcomer
//!   with nothing, so the population stays at `peers`.
//! - **Catalog.** File `i` (0 the most popular) starts with `head_holders × w_i / w_0` holders
//!   (`w_i` its Zipf weight), and at least 1 to `tail_holders_max`: the head starts plentiful,
//!   the long tail with one to three copies on random peers. A *tail file* is one that starts
//!   with at most `tail_holders_max` holders. Whether it is still around after weeks depends
//!   on it being copied before its few holders leave for good.
//! - **Demand.** Requests arrive as a Poisson process, `requests_per_hour` per online peer,
//!   for a Zipf(`zipf_s`) file; a draw for a file the peer holds or already wants is dropped
//!   (so the draws, and so the churn and demand, are the same for every policy).
//! - **Downloads.** A request asks for up to [`SOURCES_PER_LOOKUP`] online holders offering
//!   the file (what the directory hands out) and queues at the one with the shortest queue. It
//!   stays there while both ends are online and the holder offers the file; otherwise it looks
//!   again every step, keeping what it has (downloads resume). A request older than
//!   `give_up_after_hours` is abandoned; one whose peer leaves for good is orphaned. A
//!   completed download makes the requester a holder, and so a source.
//! - **Upload.** A holder serves `slots_per_peer` requests of its queue at a time and shares
//!   `upload_bytes_per_sec` between them; what one cannot use goes to the others. A slot is a
//!   permit, as in the peer's server: an upload keeps it until done or until one end goes,
//!   and the policy only chooses who gets a slot that frees. (Taking slots from running
//!   uploads for rarer files was tried: under overload it leaves many popular downloads half
//!   done until they are abandoned, and completes fewer in all.)
//!
//! The [`Policy`] says which requests get the slots and how the upload is split; it is the
//! only thing that differs between runs. Ranks come from [`Rarity::rank`] with the sim's exact
//! counts: online sources offering the file, and requests decayed by [`HALF_LIFE`] as the
//! directory's sketch does ([`super::demand`]), without its collisions.
//!
//! Simplifications, on purpose: one source per download (the scheduler uses several, which
//! changes speed, not who is served first); the upload split is the fluid limit of
//! [`super::pacer`] (weights per minute, not pieces); download links never limit; a holder's
//! rank of a file is exact rather than the directory's last class change.

use std::cmp::Reverse;
use std::time::Duration;

use super::demand::{HALF_LIFE, decayed};
use super::policy::{DEFAULT_RARE_THRESHOLD, SeedPolicy};
use super::rank::{Rarity, SeedRank};

/// One step of virtual time.
pub const STEP: Duration = Duration::from_secs(60);
/// How many sources a lookup returns, at most.
pub const SOURCES_PER_LOOKUP: usize = 8;
const STEPS_PER_HOUR: f64 = 60.0;

/// How holders share their upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Today's: slots in arrival order, upload split evenly (every peer `always`).
    Fcfs,
    /// Slots by the file's [`SeedRank`] (last copy first), upload split by
    /// [`SeedRank::weight`] (every peer `always`).
    Ranked,
    /// [`Policy::Ranked`], and every peer `rare` ([`DEFAULT_RARE_THRESHOLD`]): a holder stops
    /// offering a file while enough others do, and starts again when they leave.
    Rare,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Fcfs => "always, first come first served",
            Policy::Ranked => "always, ranked by rarity",
            Policy::Rare => "rare, ranked by rarity",
        })
    }
}

/// A scenario. See the module doc for what each number does.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub peers: u32,
    pub files: u32,
    pub file_bytes: u64,
    pub upload_bytes_per_sec: u64,
    pub slots_per_peer: u32,
    pub zipf_s: f64,
    pub requests_per_hour: f64,
    pub mean_online_hours: f64,
    pub mean_offline_hours: f64,
    pub mean_lifetime_days: f64,
    /// Holders of the most popular file at the start.
    pub head_holders: u32,
    /// A tail file starts with 1 to this many holders.
    pub tail_holders_max: u32,
    pub give_up_after_hours: f64,
    pub days: u32,
    pub seed: u64,
}

impl Config {
    /// The bench's scenario, chosen so that upload is scarce where demand is: songs of 4 MiB,
    /// 8 KiB/s of upload per peer (28 MiB an hour, a hard cap on a metered link) against 20
    /// draws an online hour (80 MiB asked, about half of it for files already held), peers
    /// online a third of the time and gone for good after three weeks on average. With ample
    /// upload every policy serves nearly everything at once and they barely differ; the bench
    /// prints that case too.
    pub fn bench() -> Self {
        Self {
            peers: 300,
            files: 10_000,
            file_bytes: 4 << 20,
            upload_bytes_per_sec: 8 << 10,
            slots_per_peer: 4,
            zipf_s: 1.0,
            requests_per_hour: 20.0,
            mean_online_hours: 4.0,
            mean_offline_hours: 8.0,
            mean_lifetime_days: 21.0,
            head_holders: 50,
            tail_holders_max: 3,
            give_up_after_hours: 6.0,
            days: 30,
            seed: 1,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub policy: Policy,
    /// Files some peer that has not left for good holds completely, at the start and end.
    pub files_at_start: u32,
    pub files_at_end: u32,
    pub tail_at_start: u32,
    pub tail_at_end: u32,
    /// Requests made (draws for held or wanted files are not requests).
    pub requests: u64,
    pub completed: u64,
    pub abandoned: u64,
    /// Requests whose peer left for good before they completed.
    pub orphaned: u64,
    /// Still running at the end.
    pub pending: u64,
    /// Request to completion, in minutes; 0 with no completion.
    pub median_minutes: u64,
    pub p99_minutes: u64,
    pub uploaded_bytes: u64,
    /// Bytes of completed downloads plus the partial ones' (abandoned, orphaned, pending).
    pub downloaded_bytes: u64,
    /// Upload of each peer that ever was (newcomers included), median and 90th percentile.
    pub peer_upload_p50: u64,
    pub peer_upload_p90: u64,
}

impl Report {
    pub fn percent(part: u32, whole: u32) -> f64 {
        if whole == 0 { 100.0 } else { f64::from(part) * 100.0 / f64::from(whole) }
    }
}

/// splitmix64 (Steele, Lea and Flood, 2014). Written here rather than taken from `rand`: the
/// core crate has no dependency its decisions do not need, and a sim's numbers must not change
/// when a dependency changes its generator.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (Lemire's multiply-shift; the bias is below 2^-32 for our n).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// An exponential wait of `mean` steps, at least one step.
    fn wait(&mut self, mean: f64) -> u64 {
        ((-(1.0 - self.unit()).ln() * mean).ceil() as u64).max(1)
    }

    /// Poisson(`mean`) by Knuth's product of uniforms, in chunks so `exp(-mean)` stays normal.
    pub(crate) fn poisson(&mut self, mean: f64) -> u64 {
        let (mut left, mut n) = (mean, 0);
        while left > 0.0 {
            let chunk = left.min(30.0);
            left -= chunk;
            let limit = (-chunk).exp();
            let mut p = self.unit();
            while p > limit {
                n += 1;
                p *= self.unit();
            }
        }
        n
    }
}

/// Zipf over `0..n` by its cumulative weights and a binary search.
#[derive(Debug)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: u32, s: f64) -> Self {
        let mut total = 0.0;
        let cdf = (1..=n).map(|k| {
            total += f64::from(k).powf(-s);
            total
        });
        Self { cdf: cdf.collect() }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit() * self.cdf.last().copied().unwrap_or(0.0);
        let i = self.cdf.partition_point(|&c| c <= u).min(self.cdf.len().saturating_sub(1));
        u32::try_from(i).unwrap_or(u32::MAX)
    }
}

/// `capacity` bytes shared between uploads of (bytes still to send, weight) by weight, what
/// one cannot use going to the others (water-filling): the bytes each gets.
pub(crate) fn share(capacity: u64, uploads: &[(u64, u32)]) -> Vec<u64> {
    let mut given = vec![0u64; uploads.len()];
    let mut open: Vec<usize> = (0..uploads.len()).collect();
    let mut left = capacity;
    while !open.is_empty() && left > 0 {
        let total: u64 = open.iter().map(|&i| u64::from(uploads[i].1.max(1))).sum();
        let fair = |i: usize| left * u64::from(uploads[i].1.max(1)) / total;
        let (sated, hungry): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| uploads[i].0 - given[i] <= fair(i));
        if sated.is_empty() {
            for &i in &hungry {
                given[i] += fair(i);
            }
            break;
        }
        for &i in &sated {
            left -= uploads[i].0 - given[i];
            given[i] = uploads[i].0;
        }
        open = hungry;
    }
    given
}

/// One bit per (peer slot, file).
#[derive(Debug)]
pub(crate) struct Bits {
    words: Vec<u64>,
    row: usize,
}

impl Bits {
    pub(crate) fn new(peers: usize, files: usize) -> Self {
        let row = files.div_ceil(64);
        Self { words: vec![0; peers * row], row }
    }

    pub(crate) fn get(&self, p: usize, f: usize) -> bool {
        self.words[p * self.row + f / 64] & (1 << (f % 64)) != 0
    }

    pub(crate) fn set(&mut self, p: usize, f: usize, on: bool) {
        let w = &mut self.words[p * self.row + f / 64];
        if on { *w |= 1 << (f % 64) } else { *w &= !(1 << (f % 64)) }
    }

    pub(crate) fn clear_row(&mut self, p: usize) {
        self.words[p * self.row..(p + 1) * self.row].fill(0);
    }
}

#[path = "swarm_sim_world.rs"]
mod world;

/// Runs `config` under `policy`.
pub fn run(config: &Config, policy: Policy) -> Report {
    world::World::new(config, policy).run()
}

/// The seeding policy every peer runs under `policy`.
fn seed_policy(policy: Policy) -> SeedPolicy {
    match policy {
        Policy::Fcfs | Policy::Ranked => SeedPolicy::Always,
        Policy::Rare => SeedPolicy::Rare { threshold: DEFAULT_RARE_THRESHOLD },
    }
}

/// A file's demand as the directory counts it: requests, halved at every [`HALF_LIFE`]
/// boundary since the last one (as the sketch halves all its counters at once).
#[derive(Clone, Copy, Debug, Default)]
struct Demand {
    count: u32,
    epoch: u64,
}

impl Demand {
    fn at(self, epoch: u64) -> u32 {
        let halvings = u32::try_from(epoch.saturating_sub(self.epoch)).unwrap_or(u32::MAX);
        decayed(self.count, HALF_LIFE.saturating_mul(halvings))
    }

    fn record(&mut self, epoch: u64) {
        *self = Demand { count: self.at(epoch).saturating_add(1), epoch };
    }
}

/// The rank and upload weight of a file with `sources` online offering copies and `demand`.
fn rank(policy: Policy, sources: u32, demand: u32) -> (SeedRank, u32) {
    match policy {
        Policy::Fcfs => (SeedRank::default(), 1),
        Policy::Ranked | Policy::Rare => {
            let r = Rarity { online_sources: sources, complete_sources: sources, demand }.rank();
            (r, r.weight())
        }
    }
}

/// The order a holder gives its slots in: uploads already running keep theirs (a slot is a
/// permit, as in the peer's server), then rank (all equal under FCFS), then arrival.
type SlotKey = (Reverse<bool>, Reverse<SeedRank>, u64, u64);

#[cfg(test)]
#[path = "swarm_sim_tests.rs"]
mod tests;

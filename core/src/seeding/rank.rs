//! A file's rarity (what the directory tells its holders) and its seed rank (the order a
//! holder serves in).
//!
//! The directory sends a holder a file's [`Rarity`] only when its [`Rarity::class`] changes:
//! sources are counted in buckets that double (1, 2, 3, 4-7, 8-15, 16+), demand in buckets that
//! double too, so a popular file whose source count moves by one every minute costs no
//! message, while a file's last copy but one going offline (2 → 1) is told at once.

/// What the directory knows of one file's supply and demand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rarity {
    /// Peers online with this file, complete or not.
    pub online_sources: u32,
    /// Of those, the ones holding the whole file.
    pub complete_sources: u32,
    /// Recent requests for it (Locates), decayed with [`super::demand::HALF_LIFE`]: a count,
    /// not a rate.
    pub demand: u32,
}

/// The change-detection key of a [`Rarity`]: two rarities in one class rank alike enough that
/// telling a holder about the difference is not worth a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RarityClass {
    pub online: u8,
    pub complete: u8,
    pub demand: u8,
}

/// 0, 1, 2, 3, then one bucket per doubling (4-7, 8-15, ...), the last holding everything from
/// 2^`top` on.
fn bucket(n: u32, top: u32) -> u8 {
    let b = if n < 4 { n } else { n.ilog2() + 2 };
    // `top + 2` is at most 33, so the bucket fits a u8.
    b.min(top + 2) as u8
}

impl Rarity {
    pub fn class(&self) -> RarityClass {
        RarityClass {
            // Beyond 16 sources a file is plentiful: more detail changes no decision.
            online: bucket(self.online_sources, 4),
            complete: bucket(self.complete_sources, 4),
            demand: bucket(self.demand, 16),
        }
    }

    /// The order this file's uploads get slots and bandwidth in.
    pub fn rank(&self) -> SeedRank {
        SeedRank::of(self)
    }
}

/// The serving order of a file: higher first. A plain number so it can be compared, queued and
/// carried around cheaply; [`SeedRank::weight`] turns it into a share of the upload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeedRank(u64);

/// Set on the rank of a file with at most one complete online copy (ours): if we do not serve
/// it, nobody can, so it comes before any ratio.
const LAST_COPY: u64 = 1 << 40;
/// Fixed-point scale of demand over supply (libtorrent uses 1000 the same way).
const SCALE: u64 = 1000;

impl SeedRank {
    /// The rank of a file nothing is known about (no hint from the directory yet): served as a
    /// file with a few sources and no demand, below any file known to be rare and above any
    /// known to be plentiful.
    pub const UNKNOWN: SeedRank = SeedRank(SCALE / 4);

    fn of(r: &Rarity) -> Self {
        let supply = u64::from(r.complete_sources.max(1));
        // Demand plus one: with no demand at all, the file with fewer copies still comes first.
        let ratio = (u64::from(r.demand) + 1) * SCALE / supply;
        let ratio = ratio.min(LAST_COPY - 1);
        if r.complete_sources <= 1 { SeedRank(LAST_COPY | ratio) } else { SeedRank(ratio) }
    }

    /// Whether this is a file's last complete online copy.
    pub fn is_last_copy(self) -> bool {
        self.0 & LAST_COPY != 0
    }

    /// The share of a capped upload an upload of this rank gets against others, from 1 (a
    /// plentiful file nobody asks for) to 16 (the last copy): weighted, never strict, so a
    /// popular file still moves while a rare one is served.
    pub fn weight(self) -> u32 {
        if self.is_last_copy() {
            return 16;
        }
        match self.0 {
            // Demand at least twice the supply, or three copies or fewer with some demand.
            r if r >= 2 * SCALE => 8,
            r if r >= SCALE / 3 => 4,
            r if r >= SCALE / 16 => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rarity(complete: u32, demand: u32) -> Rarity {
        Rarity { online_sources: complete, complete_sources: complete, demand }
    }

    #[test]
    fn the_last_copy_comes_first_whatever_the_demand_elsewhere() {
        let last = rarity(1, 0).rank();
        let wanted = rarity(2, 1_000_000).rank();
        assert!(last.is_last_copy() && !wanted.is_last_copy());
        assert!(last > wanted);
        assert!(rarity(1, 5).rank() > last, "among last copies, demand orders");
        assert!(rarity(0, 0).rank().is_last_copy(), "a file the directory counts no copy of is ours alone");
    }

    #[test]
    fn demand_over_supply_orders_the_rest_and_fewer_copies_win_at_equal_demand() {
        assert!(rarity(2, 10).rank() > rarity(4, 10).rank());
        assert!(rarity(4, 10).rank() > rarity(4, 2).rank());
        assert!(rarity(3, 0).rank() > rarity(50, 0).rank());
        assert!(rarity(50, 100).rank() > rarity(2, 0).rank(), "a file in demand beats an idle rare one");
    }

    #[test]
    fn weights_run_from_one_for_plentiful_to_sixteen_for_the_last_copy() {
        assert_eq!(rarity(1, 0).rank().weight(), 16);
        assert_eq!(rarity(2, 10).rank().weight(), 8);
        assert_eq!(rarity(3, 0).rank().weight(), 4);
        assert_eq!(rarity(10, 0).rank().weight(), 2);
        assert_eq!(rarity(50, 0).rank().weight(), 1);
        assert_eq!(SeedRank::UNKNOWN.weight(), 2);
        assert!(SeedRank::UNKNOWN < rarity(3, 0).rank() && SeedRank::UNKNOWN > rarity(50, 0).rank());
    }

    #[test]
    fn classes_change_at_doublings_not_at_every_count() {
        assert_ne!(rarity(1, 0).class(), rarity(2, 0).class());
        assert_ne!(rarity(3, 0).class(), rarity(4, 0).class());
        assert_eq!(rarity(4, 0).class(), rarity(7, 0).class());
        assert_eq!(rarity(16, 0).class(), rarity(5_000, 0).class());
        assert_eq!(rarity(5, 40).class(), rarity(5, 63).class());
        assert_ne!(rarity(5, 63).class(), rarity(5, 64).class());
        assert_eq!(rarity(5, u32::MAX).class().demand, 18);
    }
}

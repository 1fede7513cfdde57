//! Whether a peer offers a file at all: the user's seeding policy.

use super::rank::Rarity;

/// How many other online sources make a file plentiful enough for a `rare` peer to stay quiet,
/// by default.
pub const DEFAULT_RARE_THRESHOLD: u32 = 4;

/// What a peer serves, set by its user (`quaver daemon --seed-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeedPolicy {
    /// Serve every shared file (ranked, but to anyone who asks).
    #[default]
    Always,
    /// Serve a file while fewer than `threshold` other peers offer it, or while its demand
    /// exceeds its supply; otherwise keep it, stay quiet, and start again when sources leave.
    Rare { threshold: u32 },
    /// Download only: the directory knows, and never hands this peer out.
    Never,
}

impl SeedPolicy {
    /// Whether to offer a file, given what the directory last said of it (`None`: nothing yet)
    /// and whether we offer it now. The sources the directory counts include us while we
    /// offer, so we judge the others only; and we stop only once the others are one more than
    /// the threshold, so that two `rare` peers at the edge do not take turns going quiet.
    pub fn offers(self, rarity: Option<&Rarity>, offering_now: bool) -> bool {
        match self {
            SeedPolicy::Always => true,
            SeedPolicy::Never => false,
            SeedPolicy::Rare { threshold } => {
                let Some(r) = rarity else { return true };
                let others = r.complete_sources.saturating_sub(u32::from(offering_now));
                if r.demand > r.complete_sources {
                    return true;
                }
                if offering_now { others <= threshold } else { others < threshold }
            }
        }
    }

    /// Whether the directory may hand this peer out at all.
    pub fn is_source(self) -> bool {
        self != SeedPolicy::Never
    }
}

impl std::str::FromStr for SeedPolicy {
    type Err = String;

    /// `always`, `never`, `rare` (threshold 4) or `rare:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SeedPolicy::Always),
            "never" => Ok(SeedPolicy::Never),
            "rare" => Ok(SeedPolicy::Rare { threshold: DEFAULT_RARE_THRESHOLD }),
            other => other
                .strip_prefix("rare:")
                .and_then(|n| n.parse().ok())
                .map(|threshold| SeedPolicy::Rare { threshold })
                .ok_or_else(|| format!("unknown seed policy {other:?}: use always, rare, rare:N or never")),
        }
    }
}

impl std::fmt::Display for SeedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedPolicy::Always => f.write_str("always"),
            SeedPolicy::Never => f.write_str("never"),
            SeedPolicy::Rare { threshold } if *threshold == DEFAULT_RARE_THRESHOLD => f.write_str("rare"),
            SeedPolicy::Rare { threshold } => write!(f, "rare:{threshold}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(n: u32) -> Rarity {
        Rarity { online_sources: n, complete_sources: n, demand: 0 }
    }

    #[test]
    fn rare_goes_quiet_past_the_threshold_and_back_below_it_with_a_band_between() {
        let rare = SeedPolicy::Rare { threshold: 4 };
        // Offering, we are one of the counted copies: 5 counted = 4 others, still serve.
        assert!(rare.offers(Some(&copies(5)), true));
        assert!(!rare.offers(Some(&copies(6)), true), "5 others: quiet");
        // Quiet, the count is of others only: 4 others keep us quiet, 3 wake us.
        assert!(!rare.offers(Some(&copies(4)), false));
        assert!(rare.offers(Some(&copies(3)), false));
        assert!(rare.offers(None, false), "no word from the directory: serve");
        let wanted = Rarity { online_sources: 30, complete_sources: 30, demand: 31 };
        assert!(rare.offers(Some(&wanted), false), "demand over supply");
    }

    #[test]
    fn two_rare_peers_at_the_edge_settle_instead_of_taking_turns() {
        let rare = SeedPolicy::Rare { threshold: 4 };
        // Three always-sources and two rare peers that start quiet.
        let (mut a, mut b) = (false, false);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let counted = copies(3 + u32::from(a) + u32::from(b));
            (a, b) = (rare.offers(Some(&counted), a), rare.offers(Some(&counted), b));
            seen.push((a, b));
        }
        assert_eq!(seen[2..], [(true, true); 4], "{seen:?}");
    }

    #[test]
    fn policies_parse_and_print_back() {
        for text in ["always", "never", "rare", "rare:9"] {
            assert_eq!(text.parse::<SeedPolicy>().unwrap().to_string(), text);
        }
        assert!("sometimes".parse::<SeedPolicy>().unwrap_err().contains("use always"));
        assert!("rare:x".parse::<SeedPolicy>().is_err());
        assert!(!SeedPolicy::Never.is_source() && SeedPolicy::Always.is_source());
    }
}

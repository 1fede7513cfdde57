//! The relay the directory hands pairs that cannot punch: a TURN server (coturn) run beside it,
//! and the credentials that let a peer use it (`proto/directory.proto`, "Relay").
//!
//! The directory never relays a byte itself. It shares one secret with the TURN server
//! (coturn's `use-auth-secret` / `static-auth-secret`) and mints credentials the TURN REST API
//! way: the username is `expiry:peer-id-hex`, the password base64(HMAC-SHA1(secret, username)).
//! The TURN server checks them without asking anyone, refuses them after `expiry`, and keeps
//! its own per-allocation and total bandwidth caps (coturn's `max-bps`, `bps-capacity`), so
//! the relay is never open: only a peer the directory gave credentials to (one with a session
//! and an open rendezvous connection) can allocate, and only until they expire.
//!
//! Must never hand the secret itself to anyone, or mint credentials for a peer without a
//! session.

use std::time::Duration;

use base64::Engine as _;
use quaver_shared::PeerId;
use quaver_shared::directory::v1::TurnCredentials;

/// Shortest secret accepted: a guessable one would make the relay open to anyone.
pub const MIN_SECRET_LEN: usize = 16;

/// The TURN server to hand out and the key to mint its credentials with.
pub struct RelayOffer {
    address: String,
    key: ring::hmac::Key,
    lifetime: Duration,
}

impl RelayOffer {
    /// `address` as peers reach it (`host:port`), the secret shared with the TURN server, and
    /// how long minted credentials stay valid.
    pub fn new(address: String, secret: &str, lifetime: Duration) -> Self {
        // SHA-1 because the TURN REST convention (and coturn) use it; as an HMAC it is sound.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
        Self { address, key, lifetime }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Credentials for `peer`, valid from `now_unix` (seconds since the epoch) for the offer's
    /// lifetime.
    pub fn credentials(&self, peer: &PeerId, now_unix: u64) -> TurnCredentials {
        let expiry = now_unix.saturating_add(self.lifetime.as_secs());
        let username = format!("{expiry}:{peer}");
        let tag = ring::hmac::sign(&self.key, username.as_bytes());
        let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        TurnCredentials { server: self.address.clone(), username, password }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_convention() {
        let offer =
            RelayOffer::new("198.18.0.1:3478".into(), "north-wind-secret-0123", Duration::from_secs(600));
        let peer = PeerId::from_slice(&[7; 32]).unwrap();
        let c = offer.credentials(&peer, 1_699_999_400);
        assert_eq!(c.username, format!("1700000000:{}", "07".repeat(32)));
        // Python: base64(hmac.new(secret, username, sha1).digest()), as coturn computes it.
        assert_eq!(c.password, "sgGy7t8evln4YIQlxTEhYvh6JzY=");
        assert_eq!(c.server, "198.18.0.1:3478");
        let other = offer.credentials(&PeerId::from_slice(&[8; 32]).unwrap(), 1_699_999_400);
        assert_ne!(other.password, c.password, "one peer's credentials are not another's");
    }
}

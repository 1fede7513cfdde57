//! Announce proofs: the directory believes an Announce's PeerId only if the announcer signed a
//! fresh challenge with that PeerId's key (`proto/directory.proto`, session flow, step 1).
//! Without this, anyone could announce someone else's PeerId and void its session, and from
//! the victim's own IP (same host, same NAT) the connect-back, which the victim itself
//! answers, would even make the impostor's session a source.
//!
//! Sans-IO: time comes in as an `Instant`; nothing here sleeps or does I/O.
//!
//! A nonce is stateless until used: its issue time and a keyed BLAKE3 MAC (a per-process
//! random secret) over the PeerId, the asker's IP and that time, so issuing one costs no
//! memory and a flood of `Challenge` calls fills nothing. Only *used* nonces are remembered,
//! to refuse a replay, and only until they would have expired anyway: the memory is bounded by
//! the Announces of one validity period, and a hard cap refuses more (RESOURCE_EXHAUSTED,
//! never a silently accepted replay). A restart makes a new secret: nonces issued before it
//! are refused, and the peer asks again.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use quaver_shared::PeerId;
use quaver_shared::directory::v1::AnnounceRequest;

/// How long a nonce is accepted after it was issued.
pub const VALID_FOR: Duration = Duration::from_secs(60);
/// Used nonces remembered at most (each some 60 bytes): far above the Announces one validity
/// period sees, which the per-IP and per-peer rate limits bound long before this.
const MAX_USED: usize = 200_000;

const TIME_BYTES: usize = 8;
const MAC_BYTES: usize = 32;
/// The length of every nonce this module issues.
pub const NONCE_BYTES: usize = TIME_BYTES + MAC_BYTES;

/// Why an Announce's proof was refused; each says what the peer should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error(
        "the announce carries no challenge or no signature; call Challenge and sign it (see directory.proto)"
    )]
    Missing,
    #[error("the challenge was not issued by this directory for this peer id and IP; call Challenge again")]
    Foreign,
    #[error("the challenge has expired (valid {} s); call Challenge again", VALID_FOR.as_secs())]
    Expired,
    #[error("the challenge was already used; call Challenge for each Announce")]
    Replayed,
    #[error("the signature does not verify with the announced peer id's key")]
    BadSignature,
    #[error("too many announces to check right now; try again in a minute")]
    Busy,
}

pub struct Challenges {
    secret: [u8; 32],
    /// Issue times are milliseconds since this instant.
    epoch: Instant,
    /// Used nonces by issue time, so the expired ones are dropped from the front.
    used: BTreeSet<(u64, [u8; MAC_BYTES])>,
}

impl Challenges {
    /// Challenges keyed by `secret` (random, per process), with issue times counted from
    /// `epoch`.
    pub fn new(secret: [u8; 32], epoch: Instant) -> Self {
        Self { secret, epoch, used: BTreeSet::new() }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, peer: &PeerId, ip: IpAddr, issued: u64) -> [u8; MAC_BYTES] {
        let ip = match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(b"quaver announce challenge v1\0");
        hasher.update(peer.as_bytes());
        hasher.update(&ip);
        hasher.update(&issued.to_be_bytes());
        *hasher.finalize().as_bytes()
    }

    /// A nonce for the next Announce of `peer` from `ip`.
    pub fn issue(&self, peer: &PeerId, ip: IpAddr, now: Instant) -> Vec<u8> {
        let issued = self.millis(now);
        let mut nonce = Vec::with_capacity(NONCE_BYTES);
        nonce.extend_from_slice(&issued.to_be_bytes());
        nonce.extend_from_slice(&self.mac(peer, ip, issued));
        nonce
    }

    /// Checks the proof of `request` (already validated: `peer` is its PeerId), which came
    /// from `ip`, and uses its nonce up. Nothing is remembered unless the proof is good.
    pub fn check(
        &mut self,
        peer: &PeerId,
        ip: IpAddr,
        request: &AnnounceRequest,
        now: Instant,
    ) -> Result<(), ProofError> {
        if request.challenge.is_empty() || request.signature.is_empty() {
            return Err(ProofError::Missing);
        }
        if request.challenge.len() != NONCE_BYTES {
            return Err(ProofError::Foreign);
        }
        let (time, mac) = request.challenge.split_at(TIME_BYTES);
        let mut issued = [0u8; TIME_BYTES];
        issued.copy_from_slice(time);
        let issued = u64::from_be_bytes(issued);
        // blake3::Hash compares in constant time.
        if blake3::Hash::from(self.mac(peer, ip, issued))
            != blake3::Hash::from_slice(mac).map_err(|_| ProofError::Foreign)?
        {
            return Err(ProofError::Foreign);
        }
        let age = self.millis(now).saturating_sub(issued);
        if u128::from(age) >= VALID_FOR.as_millis() {
            return Err(ProofError::Expired);
        }
        if !quaver_shared::announce_proof::verify(peer, request) {
            return Err(ProofError::BadSignature);
        }
        self.forget_expired(now);
        let mut key = [0u8; MAC_BYTES];
        key.copy_from_slice(mac);
        if self.used.contains(&(issued, key)) {
            return Err(ProofError::Replayed);
        }
        if self.used.len() >= MAX_USED {
            return Err(ProofError::Busy);
        }
        self.used.insert((issued, key));
        Ok(())
    }

    /// Drops the used nonces that would be refused as expired anyway.
    fn forget_expired(&mut self, now: Instant) {
        let valid_ms = u64::try_from(VALID_FOR.as_millis()).unwrap_or(u64::MAX);
        let oldest_valid = self.millis(now).saturating_sub(valid_ms);
        self.used = self.used.split_off(&(oldest_valid, [0; MAC_BYTES]));
    }

    /// Used nonces remembered now.
    pub fn remembered(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_shared::NodeKey;
    use quaver_shared::announce_proof::sign;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn signed(key: &NodeKey, nonce: Vec<u8>) -> AnnounceRequest {
        let mut r = AnnounceRequest {
            peer_id: key.peer_id().to_vec(),
            quic_port: 5000,
            share_digest: vec![0; 32],
            ..Default::default()
        };
        sign(key, nonce, &mut r);
        r
    }

    fn setup() -> (Challenges, Instant, NodeKey) {
        let t0 = Instant::now();
        (Challenges::new([9; 32], t0), t0, NodeKey::generate().unwrap())
    }

    #[test]
    fn a_fresh_signed_challenge_passes_once() {
        let (mut c, t0, key) = setup();
        let home = ip("10.0.0.1");
        let request = signed(&key, c.issue(&key.peer_id(), home, t0));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(c.check(&key.peer_id(), home, &request, later), Ok(()));
        assert_eq!(c.check(&key.peer_id(), home, &request, later), Err(ProofError::Replayed));
        // A second challenge works.
        let again = signed(&key, c.issue(&key.peer_id(), home, later));
        assert_eq!(c.check(&key.peer_id(), home, &again, later), Ok(()));
    }

    #[test]
    fn the_holder_of_another_key_cannot_announce_a_peer_id() {
        let (mut c, t0, victim) = setup();
        let thief = NodeKey::generate().unwrap();
        let home = ip("10.0.0.1");
        // The thief asks for a challenge for the victim's id (from the victim's IP, even) and
        // signs it with its own key into a request that names the victim.
        let nonce = c.issue(&victim.peer_id(), home, t0);
        let mut request = signed(&thief, nonce);
        request.peer_id = victim.peer_id().to_vec();
        assert_eq!(c.check(&victim.peer_id(), home, &request, t0), Err(ProofError::BadSignature));
        // No signature at all, or no challenge.
        let mut bare = request.clone();
        bare.signature.clear();
        assert_eq!(c.check(&victim.peer_id(), home, &bare, t0), Err(ProofError::Missing));
        bare = request.clone();
        bare.challenge.clear();
        assert_eq!(c.check(&victim.peer_id(), home, &bare, t0), Err(ProofError::Missing));
        assert_eq!(c.remembered(), 0, "refused proofs leave nothing behind");
    }

    #[test]
    fn a_challenge_is_bound_to_its_peer_its_ip_and_this_directory() {
        let (mut c, t0, key) = setup();
        let other = NodeKey::generate().unwrap();
        // Issued for another peer id, signed correctly by `key`.
        let foreign = signed(&key, c.issue(&other.peer_id(), ip("10.0.0.1"), t0));
        assert_eq!(c.check(&key.peer_id(), ip("10.0.0.1"), &foreign, t0), Err(ProofError::Foreign));
        // Issued to another IP.
        let moved = signed(&key, c.issue(&key.peer_id(), ip("10.0.0.2"), t0));
        assert_eq!(c.check(&key.peer_id(), ip("10.0.0.1"), &moved, t0), Err(ProofError::Foreign));
        // The same IP written as IPv4-mapped IPv6 is the same IP.
        let mapped = signed(&key, c.issue(&key.peer_id(), ip("::ffff:10.0.0.1"), t0));
        assert_eq!(c.check(&key.peer_id(), ip("10.0.0.1"), &mapped, t0), Ok(()));
        // Issued by another directory (another secret), or made up.
        let elsewhere = Challenges::new([1; 32], t0);
        let alien = signed(&key, elsewhere.issue(&key.peer_id(), ip("10.0.0.1"), t0));
        assert_eq!(c.check(&key.peer_id(), ip("10.0.0.1"), &alien, t0), Err(ProofError::Foreign));
        let short = signed(&key, vec![1, 2, 3]);
        assert_eq!(c.check(&key.peer_id(), ip("10.0.0.1"), &short, t0), Err(ProofError::Foreign));
    }

    #[test]
    fn a_challenge_expires_and_used_ones_are_forgotten_after_that() {
        let (mut c, t0, key) = setup();
        let home = ip("10.0.0.1");
        let stale = signed(&key, c.issue(&key.peer_id(), home, t0));
        assert_eq!(c.check(&key.peer_id(), home, &stale, t0 + VALID_FOR), Err(ProofError::Expired));

        let used = signed(&key, c.issue(&key.peer_id(), home, t0));
        assert_eq!(c.check(&key.peer_id(), home, &used, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(c.remembered(), 1);
        let much_later = t0 + VALID_FOR + Duration::from_secs(1);
        let fresh = signed(&key, c.issue(&key.peer_id(), home, much_later));
        assert_eq!(c.check(&key.peer_id(), home, &fresh, much_later), Ok(()));
        assert_eq!(c.remembered(), 1, "the expired nonce was dropped, the fresh one kept");
        // The dropped one is still refused: as expired.
        assert_eq!(c.check(&key.peer_id(), home, &used, much_later), Err(ProofError::Expired));
    }
}

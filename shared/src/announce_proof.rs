//! The proof that an `Announce` comes from the holder of its PeerId's key
//! (`proto/directory.proto`, "Announce proof message"): the signed bytes, signing a request,
//! and the two calls a peer makes to announce (`Challenge`, then the signed `Announce`).
//!
//! Both sides build the message here, so the peer and the directory cannot disagree on it.

use crate::directory::v1::directory_client::DirectoryClient;
use crate::directory::v1::{AnnounceRequest, AnnounceResponse, ChallengeRequest};
use crate::{NodeKey, PeerId};

/// The domain separator that starts every announce proof message, so a signature made for
/// anything else (a TLS handshake, another protocol version) can never pass for one.
const DOMAIN: &[u8] = b"quaver announce proof v1\0";

/// The bytes an announcer signs: `nonce`, the PeerId and the fields of `request` that say
/// where and what it shares. Lengths are written before the variable fields, so two different
/// requests never give the same bytes.
pub fn message(nonce: &[u8], request: &AnnounceRequest) -> Vec<u8> {
    let nonce_len = u16::try_from(nonce.len()).unwrap_or(u16::MAX);
    let digest_len = u8::try_from(request.share_digest.len()).unwrap_or(u8::MAX);
    let mut out = Vec::with_capacity(DOMAIN.len() + 2 + nonce.len() + 32 + 4 + 1 + 32 + 8);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&nonce_len.to_be_bytes());
    out.extend_from_slice(&nonce[..usize::from(nonce_len)]);
    out.extend_from_slice(&request.peer_id);
    out.extend_from_slice(&request.quic_port.to_be_bytes());
    out.push(digest_len);
    out.extend_from_slice(&request.share_digest[..usize::from(digest_len)]);
    out.extend_from_slice(&request.share_count.to_be_bytes());
    out
}

/// Fills in `request.challenge` and `request.signature` for `nonce`, signed with `key` (whose
/// PeerId `request.peer_id` must be for the directory to accept it).
pub fn sign(key: &NodeKey, nonce: Vec<u8>, request: &mut AnnounceRequest) {
    request.signature = key.sign(&message(&nonce, request)).to_vec();
    request.challenge = nonce;
}

/// Whether `request` carries a valid signature by `peer` over its own challenge.
pub fn verify(peer: &PeerId, request: &AnnounceRequest) -> bool {
    crate::node_key::verify(peer, &message(&request.challenge, request), &request.signature)
}

/// Announces `request` as `key`: asks the directory for a challenge, signs it into the request
/// and sends it. `request.peer_id` is set to `key`'s PeerId.
pub async fn announce(
    client: &mut DirectoryClient<tonic::transport::Channel>,
    key: &NodeKey,
    mut request: AnnounceRequest,
) -> Result<tonic::Response<AnnounceResponse>, tonic::Status> {
    request.peer_id = key.peer_id().to_vec();
    let challenge =
        client.challenge(ChallengeRequest { peer_id: request.peer_id.clone() }).await?.into_inner();
    sign(key, challenge.nonce, &mut request);
    client.announce(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &NodeKey) -> AnnounceRequest {
        AnnounceRequest {
            peer_id: key.peer_id().to_vec(),
            quic_port: 4433,
            share_digest: vec![7; 32],
            share_count: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_changed_field_does_not() {
        let key = NodeKey::generate().unwrap();
        let mut signed = request(&key);
        sign(&key, vec![1, 2, 3], &mut signed);
        assert!(verify(&key.peer_id(), &signed));

        let changes: [fn(&mut AnnounceRequest); 5] = [
            |r| r.quic_port += 1,
            |r| r.share_digest[0] ^= 1,
            |r| r.share_count += 1,
            |r| r.challenge[0] ^= 1,
            |r| r.signature[0] ^= 1,
        ];
        for change in changes {
            let mut changed = signed.clone();
            change(&mut changed);
            assert!(!verify(&key.peer_id(), &changed));
        }
        let other = NodeKey::generate().unwrap();
        assert!(!verify(&other.peer_id(), &signed), "signed by another key");
    }

    #[test]
    fn lengths_keep_fields_apart() {
        let key = NodeKey::generate().unwrap();
        let r = request(&key);
        // The nonce's and the digest's lengths are in the message.
        assert_ne!(message(&[1, 2], &r), message(&[1], &r));
        let mut short = r.clone();
        short.share_digest.clear();
        assert_ne!(message(&[1], &r), message(&[1], &short));
    }
}

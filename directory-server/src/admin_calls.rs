//! The operator calls of the `Admin` service beyond backup (online peers, bans, removing a
//! file): the proto ↔ domain conversions the service uses, and the clients behind
//! `quaver-directory peers`, `ban`, `unban`, `bans` and `remove-file`.

use std::path::Path;

use quaver_shared::admin::v1::admin_client::AdminClient;
use quaver_shared::admin::v1::ban_target::Target;
use quaver_shared::admin::v1::{
    BanEntry, BanRequest, BanResponse, BanTarget as ProtoTarget, ListBansRequest, ListPeersRequest,
    ListPeersResponse, OnlinePeer, RemoveFileRequest, RemoveFileResponse, UnbanRequest,
};
use quaver_shared::{ContentId, PeerId};
use tonic::Status;

use crate::backup::BackupError;
use crate::bans::{Ban, BanTarget};
use crate::directory::PeerSummary;

/// Peers listed per call when the caller names no limit, and the most it may ask for.
pub const DEFAULT_PEERS: u32 = 1_000;
pub const MAX_PEERS: u32 = 10_000;

/// The target of a request, checked: exactly one of a 32-byte PeerId or an IP range.
pub fn target_from_proto(target: Option<ProtoTarget>) -> Result<BanTarget, Status> {
    match target.and_then(|t| t.target) {
        Some(Target::PeerId(bytes)) => PeerId::from_slice(&bytes)
            .map(BanTarget::Peer)
            .map_err(|e| Status::invalid_argument(format!("target.peer_id: {e}"))),
        Some(Target::IpRange(text)) => match BanTarget::parse(&text) {
            Ok(target @ BanTarget::Net(_)) => Ok(target),
            _ => Err(Status::invalid_argument(format!(
                "target.ip_range {text:?} is not an IP address or a range in CIDR notation"
            ))),
        },
        None => Err(Status::invalid_argument("target is missing: a peer_id or an ip_range")),
    }
}

pub fn target_to_proto(target: &BanTarget) -> ProtoTarget {
    let target = match target {
        BanTarget::Peer(peer) => Target::PeerId(peer.to_vec()),
        BanTarget::Net(net) => Target::IpRange(net.to_string()),
    };
    ProtoTarget { target: Some(target) }
}

pub fn entry(ban: &Ban) -> BanEntry {
    BanEntry {
        target: Some(target_to_proto(&ban.target)),
        until_unix_ms: ban.until_unix_ms,
        created_unix_ms: ban.created_unix_ms,
        reason: ban.reason.clone(),
    }
}

/// A listed ban back in domain terms, for printing; `None` for a malformed entry.
pub fn ban_of(entry: &BanEntry) -> Option<Ban> {
    let target = target_from_proto(entry.target.clone()).ok()?;
    Some(Ban {
        target,
        until_unix_ms: entry.until_unix_ms,
        created_unix_ms: entry.created_unix_ms,
        reason: entry.reason.clone(),
    })
}

pub fn online_peer(peer: &PeerSummary) -> OnlinePeer {
    OnlinePeer {
        peer_id: peer.peer.to_vec(),
        address: peer.address.to_string(),
        reachable: peer.reachable,
        files: peer.files,
        free_upload_slots: peer.free_upload_slots,
        last_seen_ms_ago: u64::try_from(peer.since_last_seen.as_millis()).unwrap_or(u64::MAX),
    }
}

fn remote(s: Status) -> BackupError {
    BackupError::Remote(format!("{:?}: {}", s.code(), s.message()))
}

async fn client(url: &str, ca: Option<&Path>) -> Result<AdminClient<tonic::transport::Channel>, BackupError> {
    Ok(AdminClient::new(crate::admin::connect(url, ca).await?))
}

/// The first `limit` online peers (0: the server's default) and how many are online.
pub async fn list_peers(url: &str, ca: Option<&Path>, limit: u32) -> Result<ListPeersResponse, BackupError> {
    let request = ListPeersRequest { limit, after: Vec::new() };
    Ok(client(url, ca).await?.list_peers(request).await.map_err(remote)?.into_inner())
}

pub async fn ban(
    url: &str,
    ca: Option<&Path>,
    target: &BanTarget,
    seconds: u64,
    reason: String,
) -> Result<BanResponse, BackupError> {
    let request = BanRequest { target: Some(target_to_proto(target)), seconds, reason };
    Ok(client(url, ca).await?.ban(request).await.map_err(remote)?.into_inner())
}

/// Lifts the ban of `target`; false if none was in force.
pub async fn unban(url: &str, ca: Option<&Path>, target: &BanTarget) -> Result<bool, BackupError> {
    let request = UnbanRequest { target: Some(target_to_proto(target)) };
    Ok(client(url, ca).await?.unban(request).await.map_err(remote)?.into_inner().lifted)
}

pub async fn list_bans(url: &str, ca: Option<&Path>) -> Result<Vec<BanEntry>, BackupError> {
    Ok(client(url, ca).await?.list_bans(ListBansRequest {}).await.map_err(remote)?.into_inner().bans)
}

pub async fn remove_file(
    url: &str,
    ca: Option<&Path>,
    id: &ContentId,
) -> Result<RemoveFileResponse, BackupError> {
    let request = RemoveFileRequest { content_id: id.to_vec() };
    Ok(client(url, ca).await?.remove_file(request).await.map_err(remote)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_travel_both_ways_and_bad_ones_are_refused() {
        for text in [PeerId::from_array([3; 32]).to_string().as_str(), "10.0.0.0/8", "2001:db8::/32"] {
            let target = BanTarget::parse(text).unwrap();
            assert_eq!(target_from_proto(Some(target_to_proto(&target))).unwrap(), target);
        }
        let bad = [
            None,
            Some(ProtoTarget { target: None }),
            Some(ProtoTarget { target: Some(Target::PeerId(vec![1; 8])) }),
            Some(ProtoTarget { target: Some(Target::IpRange("10.0.0.0/40".into())) }),
            // A peer id where a range belongs is not a range.
            Some(ProtoTarget { target: Some(Target::IpRange(PeerId::from_array([3; 32]).to_string())) }),
        ];
        for target in bad {
            assert_eq!(
                target_from_proto(target.clone()).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{target:?}"
            );
        }
    }
}

//! Turns untrusted protobuf messages into typed, bounded values, or a clear
//! INVALID_ARGUMENT. Nothing here touches state: a request that fails validation changes
//! nothing.

use quaver_shared::directory::v1::{FileInfo, MediaKind, SharedFile};
use quaver_shared::limits::*;
use quaver_shared::{ContentId, PeerId};

use crate::catalog::Addition;
use crate::error::{DirectoryError, Result, invalid};

pub fn content_id(field: &str, bytes: &[u8]) -> Result<ContentId> {
    ContentId::from_slice(bytes).map_err(|e| invalid(format!("{field}: {e}")))
}

pub fn peer_id(field: &str, bytes: &[u8]) -> Result<PeerId> {
    PeerId::from_slice(bytes).map_err(|e| invalid(format!("{field}: {e}")))
}

pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(format!("{field} is {} bytes; the limit is {max}", value.len())));
    }
    if value.chars().any(|c| c == '\0') {
        return Err(invalid(format!("{field} contains a NUL character")));
    }
    Ok(())
}

/// An announced private address: empty, or `ip:port` with a nonzero port and an IP that only
/// means something on the peer's own network (RFC 1918, RFC 6598 shared space, IPv6 unique
/// local or link-local). A public address here would let a peer point its neighbours anywhere.
pub fn local_address(field: &str, value: &str) -> Result<Option<std::net::SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr =
        value.parse().map_err(|_| invalid(format!("{field} {value:?} is not ip:port")))?;
    if !quaver_core::nat::is_private(addr.ip()) || addr.port() == 0 {
        return Err(invalid(format!(
            "{field} {value} must be a private address (RFC 1918, RFC 6598, IPv6 ULA or link-local) with a port"
        )));
    }
    Ok(Some(addr))
}

pub fn batch_len(field: &str, len: usize) -> Result<()> {
    if len > MAX_BATCH_FILES {
        return Err(DirectoryError::InvalidArgument(format!(
            "{field} has {len} entries; the limit per request is {MAX_BATCH_FILES}"
        )));
    }
    Ok(())
}

pub fn media_kind(value: i32) -> Result<()> {
    MediaKind::try_from(value)
        .map(|_| ())
        .map_err(|_| invalid(format!("media_kind {value} is not a known MediaKind")))
}

fn file_info(index: usize, info: Option<&FileInfo>) -> Result<(ContentId, FileInfo)> {
    let info = info.ok_or_else(|| invalid(format!("added[{index}].info is missing")))?;
    let id = content_id(&format!("added[{index}].info.content_id"), &info.content_id)?;
    text(&format!("added[{index}].info.file_name"), &info.file_name, MAX_FILE_NAME_BYTES)?;
    if info.file_name.trim().is_empty() {
        return Err(invalid(format!("added[{index}].info.file_name is empty")));
    }
    text(&format!("added[{index}].info.title"), &info.title, MAX_TAG_BYTES)?;
    text(&format!("added[{index}].info.artist"), &info.artist, MAX_TAG_BYTES)?;
    text(&format!("added[{index}].info.album"), &info.album, MAX_TAG_BYTES)?;
    media_kind(info.media_kind)?;
    Ok((id, info.clone()))
}

pub fn additions(added: &[SharedFile]) -> Result<Vec<Addition>> {
    batch_len("added", added.len())?;
    added
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (id, info) = file_info(i, f.info.as_ref())?;
            Ok(Addition { id, info, complete: f.complete })
        })
        .collect()
}

pub fn content_ids(field: &str, ids: &[Vec<u8>]) -> Result<Vec<ContentId>> {
    batch_len(field, ids.len())?;
    ids.iter().enumerate().map(|(i, b)| content_id(&format!("{field}[{i}]"), b)).collect()
}

/// Page bounds: (offset, page_size).
pub fn page(page: u32, page_size: u32) -> Result<(usize, usize)> {
    let size = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size };
    if size > MAX_PAGE_SIZE {
        return Err(invalid(format!("page_size {size} is over the limit of {MAX_PAGE_SIZE}")));
    }
    let end = u64::from(page) * u64::from(size) + u64::from(size);
    if end > u64::from(MAX_SEARCH_DEPTH) {
        return Err(invalid(format!(
            "page {page} of size {size} reaches past result {MAX_SEARCH_DEPTH}, the deepest one served"
        )));
    }
    Ok((page as usize * size as usize, size as usize))
}

pub fn query(q: &str) -> Result<&str> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(invalid(format!("query is {} bytes; the limit is {MAX_QUERY_BYTES}", q.len())));
    }
    if q.trim().is_empty() {
        return Err(invalid("query is empty"));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_local_address_must_be_private_and_have_a_port() {
        assert_eq!(super::local_address("local_address", "").unwrap(), None);
        for ok in ["192.168.1.10:4433", "10.0.0.2:1", "100.64.3.4:9", "[fd00::1]:4433", "[fe80::1]:7"] {
            assert!(super::local_address("local_address", ok).unwrap().is_some(), "{ok}");
        }
        for bad in ["198.18.0.5:4433", "8.8.8.8:53", "192.168.1.10:0", "[2001:db8::1]:4", "nonsense"] {
            let e = super::local_address("local_address", bad).unwrap_err().to_string();
            assert!(e.contains("local_address"), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn bounds_give_messages_that_name_the_field() {
        let e = text("added[0].info.title", &"x".repeat(2000), MAX_TAG_BYTES).unwrap_err();
        assert!(e.to_string().contains("added[0].info.title is 2000 bytes"), "{e}");
        assert!(query("").is_err());
        assert!(query(&"q".repeat(300)).unwrap_err().to_string().contains("limit is 256"));
        assert!(page(0, 101).is_err());
        assert_eq!(page(2, 0).unwrap(), (40, 20));
        assert!(page(50, 20).is_err());
        assert!(content_id("id", &[1; 5]).unwrap_err().to_string().contains("exactly 32 bytes"));
        assert!(media_kind(99).is_err());
    }
}

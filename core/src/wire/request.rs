//! The validated request: what a server acts on once the bytes have passed every bound.
//!
//! Owns the mapping between `pb::Request` and [`Request`]; never does I/O.

use super::{MAX_RANGE_LEN, WireError, pb};
use crate::ids::ContentId;

/// One request, as a server should see it: ids are exactly 32 bytes and ranges are bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The outboard (hash tree) of a file.
    Outboard(ContentId),
    /// `len` bytes of a file from `offset`; `len` is 1..=[`MAX_RANGE_LEN`] and the end does not
    /// overflow. (Whether it lies inside the file only the server can tell.)
    Range { id: ContentId, offset: u64, len: u64 },
    /// Which ranges of a file the server holds.
    Have(ContentId),
    /// The server's queue and free slots.
    Status,
}

impl Request {
    /// A range request, refused here if the server would refuse it.
    pub fn range(id: ContentId, offset: u64, len: u64) -> Result<Self, WireError> {
        check_range(offset, len)?;
        Ok(Self::Range { id, offset, len })
    }

    /// The file this request is about, if any.
    pub fn content_id(&self) -> Option<&ContentId> {
        match self {
            Self::Outboard(id) | Self::Have(id) | Self::Range { id, .. } => Some(id),
            Self::Status => None,
        }
    }
}

fn check_range(offset: u64, len: u64) -> Result<(), WireError> {
    if len == 0 || len > MAX_RANGE_LEN {
        return Err(WireError::RangeLength { len });
    }
    // `offset + len` is used as an end by both sides; it must exist.
    if offset.checked_add(len).is_none() {
        return Err(WireError::RangeOverflow { offset, len });
    }
    Ok(())
}

impl TryFrom<pb::Request> for Request {
    type Error = WireError;

    fn try_from(req: pb::Request) -> Result<Self, WireError> {
        use pb::request::Kind;
        match req.kind.ok_or(WireError::MissingKind)? {
            Kind::Outboard(m) => Ok(Self::Outboard(ContentId::from_slice(&m.content_id)?)),
            Kind::Range(m) => {
                let id = ContentId::from_slice(&m.content_id)?;
                Self::range(id, m.offset, m.length)
            }
            Kind::Have(m) => Ok(Self::Have(ContentId::from_slice(&m.content_id)?)),
            Kind::Status(pb::Status {}) => Ok(Self::Status),
        }
    }
}

impl From<&Request> for pb::Request {
    fn from(req: &Request) -> Self {
        use pb::request::Kind;
        let kind = match req {
            Request::Outboard(id) => Kind::Outboard(pb::GetOutboard { content_id: id.to_vec() }),
            Request::Range { id, offset, len } => {
                Kind::Range(pb::GetRange { content_id: id.to_vec(), offset: *offset, length: *len })
            }
            Request::Have(id) => Kind::Have(pb::GetHave { content_id: id.to_vec() }),
            Request::Status => Kind::Status(pb::Status {}),
        };
        pb::Request { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdError;

    fn id() -> ContentId {
        ContentId::of_bytes(b"song")
    }

    #[test]
    fn valid_requests_convert_both_ways() {
        for req in [
            Request::Outboard(id()),
            Request::range(id(), 0, 1).unwrap(),
            Request::range(id(), u64::MAX - MAX_RANGE_LEN, MAX_RANGE_LEN).unwrap(),
            Request::Have(id()),
            Request::Status,
        ] {
            assert_eq!(Request::try_from(pb::Request::from(&req)), Ok(req));
        }
    }

    #[test]
    fn range_bounds_are_enforced() {
        assert_eq!(Request::range(id(), 0, 0), Err(WireError::RangeLength { len: 0 }));
        assert_eq!(
            Request::range(id(), 0, MAX_RANGE_LEN + 1),
            Err(WireError::RangeLength { len: MAX_RANGE_LEN + 1 })
        );
        assert_eq!(
            Request::range(id(), u64::MAX, 1),
            Err(WireError::RangeOverflow { offset: u64::MAX, len: 1 })
        );
    }

    #[test]
    fn wrong_id_lengths_and_missing_kind_are_refused() {
        let short =
            pb::Request { kind: Some(pb::request::Kind::Have(pb::GetHave { content_id: vec![7; 31] })) };
        assert_eq!(
            Request::try_from(short),
            Err(WireError::BadId(IdError::WrongLength { what: "content id", len: 31 }))
        );
        let empty = pb::Request { kind: Some(pb::request::Kind::Outboard(pb::GetOutboard::default())) };
        assert!(matches!(Request::try_from(empty), Err(WireError::BadId(_))));
        assert_eq!(Request::try_from(pb::Request::default()), Err(WireError::MissingKind));
    }
}

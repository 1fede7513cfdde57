//! Identities: what a file is (`ContentId`) and who a node is (`PeerId`).
//!
//! Both are 32 bytes on the wire and lowercase hex for people. Parsing accepts exactly 64 hex
//! digits (or exactly 32 bytes) and nothing else, so a malformed id is refused at the edge.

use std::fmt;
use std::str::FromStr;

/// Why bytes or text are not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be exactly 32 bytes, got {len}")]
    WrongLength { what: &'static str, len: usize },
    #[error("{what} must be 64 hexadecimal digits")]
    NotHex { what: &'static str },
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            pub const LEN: usize = 32;

            pub const fn from_array(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// Takes exactly 32 bytes, as found in a protobuf `bytes` field.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                <[u8; 32]>::try_from(bytes)
                    .map(Self)
                    .map_err(|_| IdError::WrongLength { what: $what, len: bytes.len() })
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.len() != 64 {
                    return Err(IdError::NotHex { what: $what });
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdError::NotHex { what: $what })?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form: enough to tell ids apart in logs.
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }
    };
}

id_type!(
    /// The BLAKE3 root hash of a file's bytes. Same bytes, same id, whoever shares them.
    ContentId,
    "content id"
);

id_type!(
    /// A node's Ed25519 public key.
    PeerId,
    "peer id"
);

impl ContentId {
    /// The id of these bytes (the BLAKE3 hash of the whole file).
    pub fn of_bytes(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_id_is_blake3_of_the_bytes() {
        let id = ContentId::of_bytes(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(
            ContentId::from_slice(&[0; 31]),
            Err(IdError::WrongLength { what: "content id", len: 31 })
        );
        assert!(PeerId::from_slice(&[0; 33]).is_err());
        assert!(ContentId::from_str(&"a".repeat(63)).is_err());
        assert!(ContentId::from_str(&"a".repeat(66)).is_err());
        assert!(ContentId::from_str(&"g".repeat(64)).is_err());
        // Multi-byte text of the right byte length is still not hex.
        assert!(ContentId::from_str(&"é".repeat(32)).is_err());
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let id = ContentId::from_array(bytes);
            prop_assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
            prop_assert_eq!(ContentId::from_slice(&id.to_vec()), Ok(id));
        }
    }
}

//! Object ids: one type for SHA-1 (20 bytes) and SHA-256 (32 bytes) repositories, with one
//! notion of the zero id.
//!
//! An id is parsed from hex of exactly its format's length (upper or lower case, as git's
//! `get_oid_hex` reads it) and printed in lower case. There is no id for the empty string: it is
//! not hex of any length, so it is neither zero nor anything else.
use std::fmt;
use std::str::FromStr;

/// A repository's hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ObjectFormat {
    #[default]
    Sha1,
    Sha256,
}

impl ObjectFormat {
    /// Bytes in an id.
    pub const fn raw_len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 20,
            ObjectFormat::Sha256 => 32,
        }
    }

    /// Hex digits in an id.
    pub const fn hex_len(self) -> usize {
        self.raw_len() * 2
    }

    /// As the `object-format` capability names it.
    pub const fn name(self) -> &'static str {
        match self {
            ObjectFormat::Sha1 => "sha1",
            ObjectFormat::Sha256 => "sha256",
        }
    }

    /// From the value of an `object-format=` capability.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"sha1" => Some(ObjectFormat::Sha1),
            b"sha256" => Some(ObjectFormat::Sha256),
            _ => None,
        }
    }

    /// The format whose ids are `n` hex digits long.
    pub fn from_hex_len(n: usize) -> Option<Self> {
        match n {
            40 => Some(ObjectFormat::Sha1),
            64 => Some(ObjectFormat::Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An object id. `Display`, `Debug` and `FromStr` use lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid {
    format: ObjectFormat,
    /// The id, then zeros (SHA-1 uses the first 20).
    bytes: [u8; 32],
}

/// Why bytes are not an object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidError {
    #[error("{0} is not an object id (40 or 64 hex digits)")]
    NotHex(String),
    #[error("{found} is not a {format} object id ({} hex digits)", .format.hex_len())]
    WrongFormat { found: String, format: ObjectFormat },
    #[error("{len} bytes are not a {format} object id ({} bytes)", .format.raw_len())]
    WrongLength { len: usize, format: ObjectFormat },
}

impl Oid {
    /// The all-zero id: a ref that does not exist (yet, or any more).
    pub const fn zero(format: ObjectFormat) -> Oid {
        Oid {
            format,
            bytes: [0; 32],
        }
    }

    /// A SHA-1 id from its bytes.
    pub const fn sha1(id: [u8; 20]) -> Oid {
        let mut bytes = [0; 32];
        let mut i = 0;
        while i < 20 {
            bytes[i] = id[i];
            i += 1;
        }
        Oid {
            format: ObjectFormat::Sha1,
            bytes,
        }
    }

    /// An id from its raw bytes, which must be as long as `format` says.
    pub fn from_bytes(format: ObjectFormat, raw: &[u8]) -> Result<Oid, OidError> {
        if raw.len() != format.raw_len() {
            return Err(OidError::WrongLength {
                len: raw.len(),
                format,
            });
        }
        let mut id = Oid::zero(format);
        id.bytes[..raw.len()].copy_from_slice(raw);
        Ok(id)
    }

    /// An id from 40 (SHA-1) or 64 (SHA-256) hex digits of either case.
    pub fn from_hex(hex: &[u8]) -> Result<Oid, OidError> {
        let format = ObjectFormat::from_hex_len(hex.len()).ok_or_else(|| OidError::NotHex(preview(hex)))?;
        Oid::from_hex_in(format, hex)
    }

    /// An id of `format` from hex of exactly its length.
    pub fn from_hex_in(format: ObjectFormat, hex: &[u8]) -> Result<Oid, OidError> {
        if hex.len() != format.hex_len() {
            return Err(if ObjectFormat::from_hex_len(hex.len()).is_some() {
                OidError::WrongFormat {
                    found: preview(hex),
                    format,
                }
            } else {
                OidError::NotHex(preview(hex))
            });
        }
        let mut id = Oid::zero(format);
        hex::decode_to_slice(hex, &mut id.bytes[..format.raw_len()])
            .map_err(|_| OidError::NotHex(preview(hex)))?;
        Ok(id)
    }

    pub fn format(&self) -> ObjectFormat {
        self.format
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.format.raw_len()]
    }

    /// Whether this is the zero id of its format: the one test of "no object" in this crate.
    pub fn is_zero(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The first seven hex digits, as git abbreviates ids for people.
    pub fn short(&self) -> String {
        hex::encode(&self.as_bytes()[..4])[..7].to_owned()
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Oid {
    type Err = OidError;

    fn from_str(s: &str) -> Result<Self, OidError> {
        Oid::from_hex(s.as_bytes())
    }
}

/// The start of some bytes, quoted, for an error message.
pub(crate) fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{text:?}{more}")
}

#[cfg(feature = "serde")]
mod serde_impl {
    use super::Oid;

    impl serde::Serialize for Oid {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.to_hex())
        }
    }

    impl<'de> serde::Deserialize<'de> for Oid {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Oid, D::Error> {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Oid::from_hex(text.as_bytes()).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_in_lower_case() {
        let upper = "AB".repeat(20);
        let id: Oid = upper.parse().unwrap();
        assert_eq!(id.format(), ObjectFormat::Sha1);
        assert_eq!(id.to_string(), "ab".repeat(20));
        let long = Oid::from_hex("cd".repeat(32).as_bytes()).unwrap();
        assert_eq!((long.format(), long.as_bytes().len()), (ObjectFormat::Sha256, 32));
        assert_eq!(long.to_string(), "cd".repeat(32));
        assert_eq!(
            Oid::from_bytes(ObjectFormat::Sha1, &[7; 20]).unwrap(),
            Oid::sha1([7; 20])
        );
    }

    #[test]
    fn the_empty_string_is_no_id_and_so_not_the_zero_id() {
        // Copies disagreed: one zero check said "" is zero (every byte of it is '0'), another
        // that it is not. git parses no id from it (get_oid_hex fails), so neither question
        // arises: there is no Oid for "".
        assert!(matches!(Oid::from_hex(b""), Err(OidError::NotHex(_))));
        assert!(Oid::zero(ObjectFormat::Sha1).is_zero());
        assert!(Oid::from_hex(&[b'0'; 64]).unwrap().is_zero());
        assert!(
            !Oid::from_hex(format!("{}1", "0".repeat(39)).as_bytes())
                .unwrap()
                .is_zero()
        );
        // Zero ids of the two formats are different ids.
        assert_ne!(Oid::zero(ObjectFormat::Sha1), Oid::zero(ObjectFormat::Sha256));
    }

    #[test]
    fn wrong_lengths_and_digits_are_refused() {
        for bad in [
            "0".repeat(39),
            "0".repeat(41),
            "g".repeat(40),
            format!("+{}", "0".repeat(39)),
        ] {
            assert!(Oid::from_hex(bad.as_bytes()).is_err(), "{bad}");
        }
        let e = Oid::from_hex_in(ObjectFormat::Sha256, &[b'a'; 40]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("\"{}\" is not a sha256 object id (64 hex digits)", "a".repeat(40))
        );
        assert!(Oid::from_bytes(ObjectFormat::Sha256, &[0; 20]).is_err());
    }
}

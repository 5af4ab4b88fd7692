//! A ref update (`<old-oid> <new-oid> <refname>`: one command of a push) and what it does.
//!
//! What an update does is derived from its ids here and nowhere else, as git's receive-pack
//! decides it: a zero new id deletes the ref (even when the old id is zero too), else a zero old
//! id creates it, else it is updated.
use std::fmt;

use crate::oid::{ObjectFormat, Oid, OidError, preview};

/// What a ref update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum RefOp {
    Create,
    Update,
    Delete,
}

impl RefOp {
    /// The one place an operation is told from the ids.
    pub fn of(old: &Oid, new: &Oid) -> RefOp {
        if new.is_zero() {
            RefOp::Delete
        } else if old.is_zero() {
            RefOp::Create
        } else {
            RefOp::Update
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefOp::Create => "create",
            RefOp::Update => "update",
            RefOp::Delete => "delete",
        }
    }
}

impl fmt::Display for RefOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pushed ref moves, as far as it was worked out: what a policy rule's `ref_op` names and
/// what a recorded decision says of a ref. An update is `FastForward` or `NonFastForward` once its
/// ancestry was checked (see [`crate::walk`]), `Update` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum RefKind {
    Create,
    Delete,
    FastForward,
    NonFastForward,
    /// An update whose ancestry has not been checked yet.
    Update,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Create => "create",
            RefKind::Delete => "delete",
            RefKind::FastForward => "fast-forward",
            RefKind::NonFastForward => "non-fast-forward",
            RefKind::Update => "update",
        }
    }
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the ids alone tell: an update stays `Update` until its ancestry is checked.
impl From<RefOp> for RefKind {
    fn from(op: RefOp) -> Self {
        match op {
            RefOp::Create => RefKind::Create,
            RefOp::Update => RefKind::Update,
            RefOp::Delete => RefKind::Delete,
        }
    }
}

/// One ref update a push asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefUpdate {
    pub old: Oid,
    pub new: Oid,
    /// The full ref name (`refs/heads/main`) as the client sent it. Whether it is a valid ref
    /// name is the server's to say (git answers `ng <ref> funny refname`).
    pub name: String,
}

/// Why a line is not a ref update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefUpdateError {
    #[error("malformed ref update {0} (expected \"<old-oid> <new-oid> <refname>\")")]
    Malformed(String),
    #[error("ref update {0}: {1}")]
    Id(String, OidError),
    #[error("ref update {0}: the ref name is not UTF-8")]
    NotUtf8(String),
}

impl RefUpdate {
    pub fn new(old: Oid, new: Oid, name: impl Into<String>) -> Self {
        Self {
            old,
            new,
            name: name.into(),
        }
    }

    pub fn op(&self) -> RefOp {
        RefOp::of(&self.old, &self.new)
    }

    /// Reads `<old-oid> SP <new-oid> SP <refname>` (the capabilities already split off, the LF
    /// already chomped) as git's `queue_command` does: each id exactly as long as `format` says
    /// (or, with no format known yet, as the first id is), then everything after the second space
    /// is the name. Ids of either case are read; they print in lower case.
    pub fn parse(line: &[u8], format: Option<ObjectFormat>) -> Result<Self, RefUpdateError> {
        let malformed = || RefUpdateError::Malformed(preview(line));
        let format = match format {
            Some(f) => f,
            None => {
                let sp = line.iter().position(|&b| b == b' ').ok_or_else(malformed)?;
                ObjectFormat::from_hex_len(sp).ok_or_else(malformed)?
            }
        };
        let n = format.hex_len();
        let id = |hex: &[u8]| Oid::from_hex_in(format, hex).map_err(|e| RefUpdateError::Id(preview(line), e));
        let (old, rest) = split_id(line, n).ok_or_else(malformed)?;
        let (new, name) = split_id(rest, n).ok_or_else(malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| RefUpdateError::NotUtf8(preview(line)))?;
        Ok(Self::new(id(old)?, id(new)?, name))
    }

    /// The command line again (without capabilities or LF).
    pub fn render(&self) -> Vec<u8> {
        format!("{} {} {}", self.old, self.new, self.name).into_bytes()
    }
}

/// `n` bytes, then a space: the bytes and what follows the space.
fn split_id(line: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    match (line.get(..n), line.get(n)) {
        (Some(id), Some(b' ')) => Some((id, &line[n + 1..])),
        _ => None,
    }
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &Oid| id.to_hex()[..7].to_owned();
        write!(
            f,
            "{} {}..{} ({})",
            self.name,
            short(&self.old),
            short(&self.new),
            self.op()
        )
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use super::{Oid, RefOp, RefUpdate};

    /// The shape of a ref update in session records: `{"old","new","name","op"}`.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored<N> {
        old: Oid,
        new: Oid,
        name: N,
        op: RefOp,
    }

    impl serde::Serialize for RefUpdate {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            Stored {
                old: self.old,
                new: self.new,
                name: &self.name,
                op: self.op(),
            }
            .serialize(s)
        }
    }

    impl<'de> serde::Deserialize<'de> for RefUpdate {
        /// The stored `op` was derived from the same ids by the same rule: it is read and
        /// derived again, never trusted over the ids.
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RefUpdate, D::Error> {
            let s = Stored::<String>::deserialize(d)?;
            Ok(RefUpdate::new(s.old, s.new, s.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{A, B, Z};

    fn parse(line: &str) -> Result<RefUpdate, RefUpdateError> {
        RefUpdate::parse(line.as_bytes(), None)
    }

    #[test]
    fn ops_are_derived_from_the_ids() {
        assert_eq!(
            parse(&format!("{Z} {A} refs/heads/x")).unwrap().op(),
            RefOp::Create
        );
        assert_eq!(
            parse(&format!("{A} {B} refs/heads/x")).unwrap().op(),
            RefOp::Update
        );
        assert_eq!(
            parse(&format!("{A} {Z} refs/heads/x")).unwrap().op(),
            RefOp::Delete
        );
        // Copies disagreed on zero to zero: one said create (the old id was checked first),
        // another delete. git's receive-pack deletes whenever the new id is zero.
        assert_eq!(
            parse(&format!("{Z} {Z} refs/heads/x")).unwrap().op(),
            RefOp::Delete
        );
    }

    #[test]
    fn lines_are_read_as_gits_queue_command_reads_them() {
        let u = parse(&format!("{} {B} refs/heads/main", A.to_uppercase())).unwrap();
        assert_eq!(u.render(), format!("{A} {B} refs/heads/main").as_bytes());
        // The name is the rest of the line, spaces and CR included: git reads it so and
        // answers "funny refname" for the one ref (a copy refused the whole push instead).
        assert_eq!(
            parse(&format!("{A} {B} refs/heads/a b")).unwrap().name,
            "refs/heads/a b"
        );
        assert_eq!(
            parse(&format!("{A} {B} refs/heads/main\r")).unwrap().name,
            "refs/heads/main\r"
        );
        assert_eq!(parse(&format!("{A} {B} ")).unwrap().name, "");
        for bad in [
            format!("{A} {B}"),
            format!("{A}  {B} refs/heads/x"),
            format!("{A} {} refs/heads/x", &B[..39]),
            format!("{A} {} refs/heads/x", "ab".repeat(32)),
            format!("{} {B} refs/heads/x", "g".repeat(40)),
            String::new(),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
        let long = "ab".repeat(32);
        let u = RefUpdate::parse(format!("{long} {long} refs/x").as_bytes(), None).unwrap();
        assert_eq!(u.old.format(), ObjectFormat::Sha256);
        assert!(
            RefUpdate::parse(
                format!("{long} {long} refs/x").as_bytes(),
                Some(ObjectFormat::Sha1)
            )
            .is_err()
        );
        assert!(matches!(
            RefUpdate::parse(&[A.as_bytes(), b" ", B.as_bytes(), b" refs/\xff"].concat(), None),
            Err(RefUpdateError::NotUtf8(_))
        ));
    }
}

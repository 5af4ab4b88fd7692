//! git objects: their types, their ids (the hash of `<type> <size>\0<content>`), and the parsers
//! of commits, trees and tags as far as a policy needs them.
//!
//! The parsers refuse what git's own parsers and fsck refuse where letting it through could hide
//! a change (a tree entry whose name is a path, two entries of one name); they never panic.
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::oid::{ObjectFormat, Oid, preview};

/// An object's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
            ObjectKind::Tag => "tag",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"commit" => Some(ObjectKind::Commit),
            b"tree" => Some(ObjectKind::Tree),
            b"blob" => Some(ObjectKind::Blob),
            b"tag" => Some(ObjectKind::Tag),
            _ => None,
        }
    }
}

/// Hashes an object as it streams: its header, then its content.
#[derive(Clone)]
pub struct ObjectHasher(Hasher);

#[derive(Clone)]
enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(format: ObjectFormat) -> Self {
        match format {
            ObjectFormat::Sha1 => Hasher::Sha1(Sha1::new()),
            ObjectFormat::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Oid {
        let (format, digest) = match self {
            Hasher::Sha1(h) => (ObjectFormat::Sha1, h.finalize().to_vec()),
            Hasher::Sha256(h) => (ObjectFormat::Sha256, h.finalize().to_vec()),
        };
        Oid::from_bytes(format, &digest).expect("a digest of the format's length")
    }
}

impl ObjectHasher {
    /// For an object of `kind` whose content is `size` bytes.
    pub fn new(format: ObjectFormat, kind: ObjectKind, size: u64) -> Self {
        let mut h = Hasher::new(format);
        h.update(format!("{} {size}\0", kind.name()).as_bytes());
        Self(h)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Oid {
        self.0.finish()
    }
}

/// The id of an object of `kind` holding `data`.
pub fn object_id(format: ObjectFormat, kind: ObjectKind, data: &[u8]) -> Oid {
    let mut h = ObjectHasher::new(format, kind, data.len() as u64);
    h.update(data);
    h.finish()
}

/// A pack's trailing checksum (or any plain hash of bytes in a format).
#[derive(Clone)]
pub(crate) struct Checksum(Hasher);

impl Checksum {
    pub(crate) fn new(format: ObjectFormat) -> Self {
        Self(Hasher::new(format))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> Oid {
        self.0.finish()
    }
}

/// Why an object's content does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("it does not start with a \"tree <id>\" line")]
    NoTree,
    #[error("a \"parent\" line does not hold an object id")]
    BadParent,
    #[error("entry {0} has no mode")]
    NoMode(usize),
    #[error("entry {0} has the invalid mode \"{1}\"")]
    BadMode(usize, String),
    #[error("entry {0} has no end to its name")]
    NoNameEnd(usize),
    #[error("entry {0} has the invalid name \"{1}\"")]
    BadName(usize, String),
    #[error("entry {0} ends inside its object id")]
    ShortId(usize),
    #[error("it has two entries named \"{0}\"")]
    Duplicate(String),
    #[error("it has no {0} line")]
    TagField(&'static str),
    #[error("its {0} line is malformed: {1}")]
    TagLine(&'static str, String),
}

/// A commit as far as a policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub tree: Oid,
    /// In order: the first parent is the branch the commit was made on.
    pub parents: Vec<Oid>,
}

/// The tree and parents of a raw commit: a `tree` line, then `parent` lines, as git's
/// `parse_commit_buffer` reads them (ids exactly as long as the format's).
pub fn parse_commit(raw: &[u8], format: ObjectFormat) -> Result<Commit, ObjectError> {
    let mut lines = raw.split(|&b| b == b'\n');
    let tree = lines
        .next()
        .and_then(|line| line.strip_prefix(b"tree "))
        .and_then(|hex| Oid::from_hex_in(format, hex).ok())
        .ok_or(ObjectError::NoTree)?;
    let mut parents = Vec::new();
    for line in lines {
        let Some(parent) = line.strip_prefix(b"parent ") else {
            break;
        };
        parents.push(Oid::from_hex_in(format, parent).map_err(|_| ObjectError::BadParent)?);
    }
    Ok(Commit { tree, parents })
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// As git writes it, read as octal: 0o100644, 0o100755, 0o120000 (symlink), 0o40000 (tree),
    /// 0o160000 (submodule).
    pub mode: u32,
    /// The name's raw bytes: git names need not be UTF-8, and two distinct names that are not
    /// must never compare equal (as their lossy forms might), or a change could hide behind the
    /// other name. Paths are reported lossily.
    pub name: Vec<u8>,
    pub id: Oid,
}

impl TreeEntry {
    pub fn is_tree(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

/// The entries of a raw tree: `<octal mode> <name>\0<raw id>`, repeated. Names that would read as
/// more than one path component, and duplicate names, are refused: git's fsck refuses them too,
/// and they would let a path hide behind another.
pub fn parse_tree(raw: &[u8], format: ObjectFormat) -> Result<Vec<TreeEntry>, ObjectError> {
    let mut entries = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let at = entries.len() + 1;
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ObjectError::NoMode(at))?;
        let mode = &rest[..space];
        if mode.is_empty() || mode.len() > 7 || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
            return Err(ObjectError::BadMode(at, mode.escape_ascii().to_string()));
        }
        let mode = mode.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
        rest = &rest[space + 1..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ObjectError::NoNameEnd(at))?;
        let name = &rest[..nul];
        if matches!(name, b"" | b"." | b"..") || name.contains(&b'/') {
            return Err(ObjectError::BadName(at, name.escape_ascii().to_string()));
        }
        let id = rest
            .get(nul + 1..nul + 1 + format.raw_len())
            .ok_or(ObjectError::ShortId(at))?;
        entries.push(TreeEntry {
            mode,
            name: name.to_vec(),
            id: Oid::from_bytes(format, id).expect("as long as the format's ids"),
        });
        rest = &rest[nul + 1 + format.raw_len()..];
    }
    let mut names: Vec<&[u8]> = entries.iter().map(|e| &e.name[..]).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ObjectError::Duplicate(twice[0].escape_ascii().to_string()));
    }
    Ok(entries)
}

/// An annotated tag: what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub object: Oid,
    pub kind: ObjectKind,
    /// The tag's name (`v1.0`).
    pub name: String,
}

/// The `object`, `type` and `tag` lines a tag starts with, in that order, as git's
/// `parse_tag_buffer` reads them.
pub fn parse_tag(raw: &[u8], format: ObjectFormat) -> Result<Tag, ObjectError> {
    let mut lines = raw.split(|&b| b == b'\n');
    let mut field = |name: &'static str| {
        let line = lines.next().ok_or(ObjectError::TagField(name))?;
        line.strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b" "))
            .ok_or(ObjectError::TagField(name))
    };
    let object = field("object")?;
    let object =
        Oid::from_hex_in(format, object).map_err(|_| ObjectError::TagLine("object", preview(object)))?;
    let kind = field("type")?;
    let kind = ObjectKind::from_name(kind).ok_or_else(|| ObjectError::TagLine("type", preview(kind)))?;
    let name = field("tag")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| ObjectError::TagLine("tag", preview(name)))?;
    Ok(Tag { object, kind, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_trees_and_commits_are_refused() {
        let sha1 = ObjectFormat::Sha1;
        let entry = |mode: &str, name: &[u8]| [mode.as_bytes(), b" ", name, b"\0", &[7; 20]].concat();
        let err = |raw: &[u8]| parse_tree(raw, sha1).unwrap_err().to_string();
        assert!(err(&entry("100644", b"a/b")).contains("invalid name"));
        assert!(err(&entry("40000", b"..")).contains("invalid name"));
        assert!(err(&entry("40000", b"")).contains("invalid name"));
        assert!(err(&entry("10x644", b"a")).contains("invalid mode"));
        assert!(
            err(&[entry("100644", b"a"), entry("40000", b"a")].concat()).contains("two entries named \"a\"")
        );
        assert!(err(&entry("100644", b"a")[..10]).contains("ends inside"));
        let tree = parse_tree(
            &[entry("40000", b".github"), entry("100755", b"\xff")].concat(),
            sha1,
        )
        .unwrap();
        assert!(tree[0].is_tree() && !tree[1].is_tree() && tree[1].mode == 0o100755);
        // A SHA-256 tree's ids are 32 bytes.
        let long = [b"100644 a\0".as_slice(), &[9; 32]].concat();
        assert_eq!(
            parse_tree(&long, ObjectFormat::Sha256).unwrap()[0].id.as_bytes(),
            &[9; 32]
        );
        assert!(parse_tree(&long, sha1).is_err());

        let tree = "tree 0123456789012345678901234567890123456789\n";
        assert_eq!(parse_commit(b"parent x\n", sha1), Err(ObjectError::NoTree));
        let c = parse_commit(
            format!("{tree}parent {}\nauthor x\n\nparent no", "a".repeat(40)).as_bytes(),
            sha1,
        );
        assert_eq!(c.unwrap().parents.len(), 1, "parents end at the first other line");
        assert_eq!(
            parse_commit(format!("{tree}parent {}\n", "a".repeat(39)).as_bytes(), sha1),
            Err(ObjectError::BadParent)
        );
    }

    #[test]
    fn tags_name_their_object() {
        let raw = format!(
            "object {}\ntype commit\ntag v1\ntagger A <a@b> 1 +0000\n\nmsg\n",
            "a".repeat(40)
        );
        let tag = parse_tag(raw.as_bytes(), ObjectFormat::Sha1).unwrap();
        assert_eq!((tag.kind, tag.name.as_str()), (ObjectKind::Commit, "v1"));
        assert_eq!(tag.object.to_string(), "a".repeat(40));
        for bad in [
            "type commit\n",
            "object x\ntype commit\ntag v\n",
            &raw.replace("type commit", "type thing"),
        ] {
            assert!(parse_tag(bad.as_bytes(), ObjectFormat::Sha1).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_hash_the_header_and_the_content() {
        // `git hash-object` of an empty blob, in both formats.
        assert_eq!(
            object_id(ObjectFormat::Sha1, ObjectKind::Blob, b"").to_string(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            object_id(ObjectFormat::Sha256, ObjectKind::Blob, b"").to_string(),
            "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
        );
    }
}

//! What a `git push` changes, read from the pack it sends: whether each ref update is a
//! fast-forward, and which file paths the pushed commits touch, so a policy can hold force pushes
//! and pushes that change protected paths (`.github/workflows/**`) for a human approver.
//!
//! [`decode`] reads a buffered pack (the bytes after the receive-pack command list, from `PACK` to
//! its trailing checksum): it inflates every object, resolves OFS_DELTA and REF_DELTA entries
//! against objects of the same pack, computes every object's id itself (never trusting the
//! client's word for which commit has which tree) and keeps the commits and trees. Blobs are
//! inflated only to hash and skip them, and deltas whose result is a blob are resolved only when a
//! REF_DELTA names them as its base. [`fast_forward`] and [`changed_paths`] then walk what the pack
//! holds and ask a [`Remote`] (the upstream, over the GitHub API) for the objects it already has.
//!
//! This module must never panic on hostile input (malformed bytes are an `Err` naming the object
//! and what was wrong), never exceed its [`Limits`] and [`Budget`], and never report "no change"
//! or "fast-forward" when it could not tell: a thin pack's delta against a base it does not hold,
//! an object found neither in the pack nor upstream, an exhausted budget or an upstream that cannot
//! answer all make the answer undecidable (`Err`), which callers treat as "force push" and
//! "touches protected paths".
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};

/// "PACK", version, object count.
const HEADER_LEN: usize = 12;
/// Object ids, REF_DELTA bases and the trailing checksum are SHA-1s.
const OID_LEN: usize = 20;
/// Inflated bytes per zlib call.
const SCRATCH: usize = 64 * 1024;
/// Delta results and bases kept for the deltas that follow them (blob deltas are resolved only
/// when a REF_DELTA needs one's id; commits and trees are kept anyway).
const DELTA_BASE_CACHE: usize = 16 << 20;
/// `git pack-objects` never writes longer delta chains (its `--depth` is capped at 4095).
const MAX_DELTA_DEPTH: u32 = 4095;

/// A SHA-1 object id. `Display`, `Debug` and `FromStr` use 40 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Oid(pub [u8; OID_LEN]);

impl Oid {
    /// The all-zero id: a ref that does not exist (yet, or any more).
    pub const ZERO: Oid = Oid([0; OID_LEN]);

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    fn from_hex(hex: &[u8]) -> Option<Self> {
        let mut id = [0; OID_LEN];
        hex::decode_to_slice(hex, &mut id).ok()?;
        Some(Self(id))
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Oid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_hex(s.as_bytes()).ok_or_else(|| format!("{s:?} is not a 40-hex-digit object id"))
    }
}

/// Where [`decode`] stops, so a hostile pack cannot make it run without end or fill memory. Besides
/// the pack itself, peak memory is at most about: `max_inflated_bytes` for the raw commits and
/// trees, and three times that once parsed (an entry of a parsed tree takes about 80 bytes, against
/// about 40 raw); about 150 bytes per object; a 16 MiB delta base cache; and three times
/// `max_object_bytes` while a delta is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Objects the pack may hold (its header says how many before anything is inflated).
    pub max_objects: usize,
    /// Inflated bytes of the commits and trees kept, over the whole pack.
    pub max_inflated_bytes: u64,
    /// Inflated size of any one object held whole in memory: a commit, a tree, a delta's
    /// instructions, or a delta's base and result when one is resolved. Blobs that are not delta
    /// bases are streamed and may be larger.
    pub max_object_bytes: usize,
    /// Decoding stops with [`PushError::Deadline`] after this instant.
    pub deadline: Instant,
}

impl Limits {
    /// Limits for pushes of ordinary size: a million objects, 256 MiB of commits and trees, and
    /// objects of up to 128 MiB (GitHub refuses files over 100 MiB).
    pub fn with_deadline(deadline: Instant) -> Self {
        Self {
            max_objects: 1 << 20,
            max_inflated_bytes: 256 << 20,
            max_object_bytes: 128 << 20,
            deadline,
        }
    }
}

/// A commit as far as the policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub tree: Oid,
    /// In order: the first parent is the branch the commit was made on.
    pub parents: Vec<Oid>,
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

/// Why [`decode`] could not read a pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("pack: expected a pack (\"PACK\"), found \"{0}\"")]
    NotAPack(String),
    #[error("pack: unsupported pack version {0} (expected 2 or 3)")]
    Version(u32),
    #[error("pack: the pack holds {count} objects, more than the limit max_objects ({max})")]
    TooManyObjects { count: u32, max: usize },
    #[error(
        "pack: object {index} of {count} (at byte {offset}) needs {size} bytes in memory, more than the \
         limit max_object_bytes ({max})"
    )]
    ObjectTooLarge {
        index: usize,
        count: u32,
        offset: usize,
        size: u64,
        max: usize,
    },
    #[error(
        "pack: the commits and trees of the pack inflate to more than the limit max_inflated_bytes ({max}), \
         at object {index} of {count}"
    )]
    TooManyInflatedBytes { index: usize, count: u32, max: u64 },
    #[error("pack: decoding took longer than its deadline ({done} of its {count} objects were read)")]
    Deadline { done: usize, count: u32 },
    #[error("pack: object {index} of {count} (at byte {offset}): {what}")]
    Malformed {
        index: usize,
        count: u32,
        offset: usize,
        what: String,
    },
    #[error("pack: {0}")]
    Pack(String),
    #[error("pack: {kind} {id} is malformed: {what}")]
    BadObject {
        kind: &'static str,
        id: Oid,
        what: String,
    },
}

/// The commits and trees a pack holds, by the ids computed from their content.
#[derive(Debug, Default, Clone)]
pub struct PackObjects {
    commits: HashMap<Oid, Commit>,
    trees: HashMap<Oid, Arc<[TreeEntry]>>,
    objects: usize,
    deltas: usize,
    unresolved: usize,
    missing_bases: Vec<Oid>,
}

impl PackObjects {
    pub fn commit(&self, id: &Oid) -> Option<&Commit> {
        self.commits.get(id)
    }

    pub fn tree(&self, id: &Oid) -> Option<&[TreeEntry]> {
        self.trees.get(id).map(|t| &**t)
    }

    /// Objects in the pack, of every type.
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// Entries stored as deltas (OFS_DELTA or REF_DELTA).
    pub fn deltas(&self) -> usize {
        self.deltas
    }

    /// Deltas whose base is not in the pack (a thin pack), directly or through another such
    /// delta: their type and id are unknown, so any of them may be a commit or tree the answers
    /// need. [`fast_forward`] and [`changed_paths`] then answer only what they can prove without
    /// them.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }

    /// The REF_DELTA bases not found among the objects the pack could resolve, sorted: objects
    /// upstream has (a thin pack), or deltas of the pack whose own base is missing.
    pub fn missing_bases(&self) -> &[Oid] {
        &self.missing_bases
    }
}

/// Decodes a buffered pack: the bytes from `PACK` to its trailing checksum, nothing after it. An
/// empty input (a push that only deletes refs sends no pack) holds no objects. Synchronous and
/// CPU-bound: run it where blocking is fine.
pub fn decode(pack: &[u8], limits: &Limits) -> Result<PackObjects, PushError> {
    if pack.is_empty() {
        return Ok(PackObjects::default());
    }
    let head = pack.get(..HEADER_LEN).ok_or_else(|| {
        PushError::Pack(format!(
            "the pack ended inside its {HEADER_LEN}-byte header, after {} bytes",
            pack.len()
        ))
    })?;
    if &head[..4] != b"PACK" {
        return Err(PushError::NotAPack(head[..4].escape_ascii().to_string()));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if version != 2 && version != 3 {
        return Err(PushError::Version(version));
    }
    let count = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if usize::try_from(count).map_or(true, |c| c > limits.max_objects) {
        return Err(PushError::TooManyObjects {
            count,
            max: limits.max_objects,
        });
    }
    // Checked first: a corrupt pack fails here whatever byte was hit, before anything is inflated.
    let body_len = pack
        .len()
        .checked_sub(OID_LEN)
        .filter(|&n| n >= HEADER_LEN)
        .ok_or_else(|| PushError::Pack("the pack is too short to hold its trailing checksum".into()))?;
    let mut sum = Sha1::new();
    for chunk in pack[..body_len].chunks(1 << 20) {
        if Instant::now() > limits.deadline {
            return Err(PushError::Deadline { done: 0, count });
        }
        sum.update(chunk);
    }
    if sum.finalize().as_slice() != &pack[body_len..] {
        return Err(PushError::Pack(
            "the pack's trailing checksum does not match its content: the pack is corrupt or truncated"
                .into(),
        ));
    }
    let mut decoder = Decoder::new(&pack[..body_len], limits, count);
    decoder.run()?;
    decoder.finish()
}

/// An object's type, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
            Kind::Tag => "tag",
        }
    }

    /// Kept whole and resolved eagerly: what the policy reads.
    fn kept(self) -> bool {
        matches!(self, Kind::Commit | Kind::Tree)
    }
}

#[derive(Debug, Clone, Copy)]
enum Base {
    Whole(Kind),
    /// The index of an earlier entry.
    Ofs(usize),
    Ref(Oid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A delta whose base's type is not known yet.
    Pending,
    /// A delta whose result is a blob or tag: its id is computed only if a REF_DELTA needs it.
    Typed(Kind),
    Known(Kind, Oid),
}

impl State {
    fn kind(self) -> Option<Kind> {
        match self {
            State::Pending => None,
            State::Typed(kind) | State::Known(kind, _) => Some(kind),
        }
    }
}

#[derive(Debug)]
struct Entry {
    offset: usize,
    /// Where its zlib stream starts.
    data: usize,
    /// Inflated size its header declares (for deltas, of the instructions).
    size: u64,
    base: Base,
    state: State,
    depth: u32,
}

/// Recently resolved objects by entry index, bounded in bytes, oldest out first.
#[derive(Default)]
struct Cache {
    map: HashMap<usize, Rc<Vec<u8>>>,
    order: VecDeque<usize>,
    bytes: usize,
}

impl Cache {
    fn put(&mut self, index: usize, data: Rc<Vec<u8>>) {
        if data.len() > DELTA_BASE_CACHE || self.map.contains_key(&index) {
            return;
        }
        while self.bytes + data.len() > DELTA_BASE_CACHE {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(old) = self.map.remove(&old) {
                self.bytes -= old.len();
            }
        }
        self.bytes += data.len();
        self.order.push_back(index);
        self.map.insert(index, data);
    }
}

struct Decoder<'p> {
    /// The pack without its trailing checksum.
    pack: &'p [u8],
    limits: &'p Limits,
    count: u32,
    entries: Vec<Entry>,
    by_id: HashMap<Oid, usize>,
    /// Raw commits and trees by entry index.
    kept: HashMap<usize, Rc<Vec<u8>>>,
    kept_bytes: u64,
    cache: Cache,
    /// Deltas waiting for the entry at an index to get a type, or for an id to appear.
    wait_index: HashMap<usize, Vec<usize>>,
    wait_id: HashMap<Oid, Vec<usize>>,
    /// Blob and tag deltas whose ids are not computed yet, in the order they got their type.
    typed: VecDeque<usize>,
    inflater: Decompress,
    scratch: Vec<u8>,
}

impl<'p> Decoder<'p> {
    fn new(pack: &'p [u8], limits: &'p Limits, count: u32) -> Self {
        Self {
            pack,
            limits,
            count,
            entries: Vec::with_capacity((count as usize).min(1 << 16)),
            by_id: HashMap::new(),
            kept: HashMap::new(),
            kept_bytes: 0,
            cache: Cache::default(),
            wait_index: HashMap::new(),
            wait_id: HashMap::new(),
            typed: VecDeque::new(),
            inflater: Decompress::new(true),
            scratch: vec![0; SCRATCH],
        }
    }

    fn malformed(&self, index: usize, offset: usize, what: impl fmt::Display) -> PushError {
        PushError::Malformed {
            index: index + 1,
            count: self.count,
            offset,
            what: what.to_string(),
        }
    }

    fn deadline(&self, index: usize) -> Result<(), PushError> {
        if Instant::now() > self.limits.deadline {
            return Err(PushError::Deadline {
                done: index,
                count: self.count,
            });
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), PushError> {
        let mut pos = HEADER_LEN;
        for index in 0..self.count as usize {
            self.deadline(index)?;
            let (base, size, data) = self.entry_header(index, pos)?;
            self.entries.push(Entry {
                offset: pos,
                data,
                size,
                base,
                state: State::Pending,
                depth: 0,
            });
            pos = self.first_pass(index)?;
        }
        if pos != self.pack.len() {
            return Err(PushError::Pack(format!(
                "{} bytes follow the last of its {} objects, before the trailing checksum",
                self.pack.len() - pos,
                self.count
            )));
        }
        // Blob deltas get ids only if a REF_DELTA still waits for a base: it may be one of them.
        while !self.wait_id.is_empty() {
            let Some(index) = self.typed.pop_front() else {
                break;
            };
            if let State::Typed(kind) = self.entries[index].state {
                let data = self.materialize(index)?;
                let id = object_id(kind, &data);
                self.known(index, kind, id);
                self.wake(index)?;
            }
        }
        Ok(())
    }

    /// Reads the header of the entry at `pos`: its base (or type), declared size, and where its
    /// zlib stream starts.
    fn entry_header(&self, index: usize, pos: usize) -> Result<(Base, u64, usize), PushError> {
        let ended = || self.malformed(index, pos, "the pack ended inside its header");
        let mut at = pos;
        let mut byte = || {
            let b = self.pack.get(at).copied();
            at += 1;
            b
        };
        let mut b = byte().ok_or_else(ended)?;
        let bits = (b >> 4) & 7;
        let mut size = u64::from(b & 0x0f);
        let mut shift = 4;
        while b & 0x80 != 0 {
            b = byte().ok_or_else(ended)?;
            let part = u64::from(b & 0x7f);
            if shift > 63 || (part << shift) >> shift != part {
                return Err(self.malformed(index, pos, "its size does not fit in 64 bits"));
            }
            size |= part << shift;
            shift += 7;
        }
        let base = match bits {
            1 => Base::Whole(Kind::Commit),
            2 => Base::Whole(Kind::Tree),
            3 => Base::Whole(Kind::Blob),
            4 => Base::Whole(Kind::Tag),
            6 => {
                // Big-endian 7-bit groups, each continuation adding 1 so no offset has two forms.
                let mut b = byte().ok_or_else(ended)?;
                let mut back = u64::from(b & 0x7f);
                while b & 0x80 != 0 {
                    b = byte().ok_or_else(ended)?;
                    back = match back.checked_add(1) {
                        Some(v) if v >> 57 == 0 => (v << 7) | u64::from(b & 0x7f),
                        _ => {
                            return Err(self.malformed(
                                index,
                                pos,
                                "its delta base offset does not fit in 64 bits",
                            ));
                        }
                    };
                }
                let target = usize::try_from(back).ok().and_then(|back| pos.checked_sub(back));
                let found = target
                    .filter(|_| back != 0)
                    .and_then(|t| self.entries.binary_search_by_key(&t, |e| e.offset).ok());
                match found {
                    Some(base) => Base::Ofs(base),
                    None => {
                        return Err(self.malformed(
                            index,
                            pos,
                            format_args!("its delta base offset {back} does not point to an earlier object"),
                        ));
                    }
                }
            }
            7 => {
                let id = self.pack.get(at..at + OID_LEN).ok_or_else(ended)?;
                at += OID_LEN;
                let mut oid = Oid::ZERO;
                oid.0.copy_from_slice(id);
                Base::Ref(oid)
            }
            _ => return Err(self.malformed(index, pos, format_args!("invalid object type {bits}"))),
        };
        Ok((base, size, at))
    }

    /// Inflates the entry just read, resolving it now when it is (or rebuilds) a commit or tree;
    /// returns where the next entry starts.
    fn first_pass(&mut self, index: usize) -> Result<usize, PushError> {
        let base_index = match self.entries[index].base {
            Base::Whole(kind) if kind.kept() => {
                let (data, end) = self.inflate_whole(index)?;
                let id = object_id(kind, &data);
                self.keep(index, kind, id, data)?;
                return Ok(end);
            }
            Base::Whole(kind) => {
                let mut hasher = object_hasher(kind, self.entries[index].size);
                let end = self.inflate(index, &mut |chunk| hasher.update(chunk))?;
                self.known(index, kind, Oid(hasher.finalize().into()));
                self.wake(index)?;
                return Ok(end);
            }
            Base::Ofs(base) => Some(base),
            Base::Ref(id) => self.by_id.get(&id).copied(),
        };
        let base_kind = base_index.and_then(|b| self.entries[b].state.kind());
        match (base_index, base_kind) {
            (Some(base), Some(kind)) if kind.kept() => {
                let (delta, end) = self.inflate_whole(index)?;
                self.resolve_kept(index, base, kind, &delta)?;
                self.wake(index)?;
                Ok(end)
            }
            (Some(base), Some(kind)) => {
                let end = self.inflate(index, &mut |_| {})?;
                self.typed(index, base, kind)?;
                self.wake(index)?;
                Ok(end)
            }
            (Some(base), None) => {
                let end = self.inflate(index, &mut |_| {})?;
                self.wait_index.entry(base).or_default().push(index);
                Ok(end)
            }
            (None, _) => {
                let end = self.inflate(index, &mut |_| {})?;
                if let Base::Ref(id) = self.entries[index].base {
                    self.wait_id.entry(id).or_default().push(index);
                }
                Ok(end)
            }
        }
    }

    fn depth(&self, index: usize, base: usize) -> Result<u32, PushError> {
        let depth = self.entries[base].depth + 1;
        if depth > MAX_DELTA_DEPTH {
            let e = &self.entries[index];
            return Err(self.malformed(
                index,
                e.offset,
                format_args!("its delta chain is longer than {MAX_DELTA_DEPTH}, more than git ever writes"),
            ));
        }
        Ok(depth)
    }

    /// Applies a delta whose base is a kept commit or tree.
    fn resolve_kept(&mut self, index: usize, base: usize, kind: Kind, delta: &[u8]) -> Result<(), PushError> {
        self.entries[index].depth = self.depth(index, base)?;
        let source = Rc::clone(&self.kept[&base]);
        let data = apply_delta(&source, delta, self.limits.max_object_bytes)
            .map_err(|what| self.malformed(index, self.entries[index].offset, what))?;
        let id = object_id(kind, &data);
        self.keep(index, kind, id, data)
    }

    /// A delta whose result is a blob or tag: its id waits until something needs it.
    fn typed(&mut self, index: usize, base: usize, kind: Kind) -> Result<(), PushError> {
        self.entries[index].depth = self.depth(index, base)?;
        self.entries[index].state = State::Typed(kind);
        self.typed.push_back(index);
        Ok(())
    }

    fn known(&mut self, index: usize, kind: Kind, id: Oid) {
        self.entries[index].state = State::Known(kind, id);
        self.by_id.entry(id).or_insert(index);
    }

    fn keep(&mut self, index: usize, kind: Kind, id: Oid, data: Vec<u8>) -> Result<(), PushError> {
        self.kept_bytes += data.len() as u64;
        if self.kept_bytes > self.limits.max_inflated_bytes {
            return Err(PushError::TooManyInflatedBytes {
                index: index + 1,
                count: self.count,
                max: self.limits.max_inflated_bytes,
            });
        }
        self.kept.insert(index, Rc::new(data));
        self.known(index, kind, id);
        Ok(())
    }

    /// Entry `start` got a type (and maybe an id): settles the deltas waiting for it, and those
    /// waiting for them.
    fn wake(&mut self, start: usize) -> Result<(), PushError> {
        let mut queue = vec![start];
        while let Some(base) = queue.pop() {
            let mut woken = self.wait_index.remove(&base).unwrap_or_default();
            if let State::Known(_, id) = self.entries[base].state
                && let Some(more) = self.wait_id.remove(&id)
            {
                woken.extend(more);
            }
            let Some(kind) = self.entries[base].state.kind() else {
                continue;
            };
            for index in woken {
                if kind.kept() {
                    let (delta, _) = self.inflate_whole(index)?;
                    self.resolve_kept(index, base, kind, &delta)?;
                } else {
                    self.typed(index, base, kind)?;
                }
                queue.push(index);
            }
        }
        Ok(())
    }

    /// The content of a resolved entry: kept, cached, or rebuilt from its delta chain.
    fn materialize(&mut self, index: usize) -> Result<Rc<Vec<u8>>, PushError> {
        // The deltas from `index` down to the first entry whose content is at hand.
        let mut chain = Vec::new();
        let mut at = index;
        let mut data = loop {
            if let Some(data) = self.kept.get(&at).or(self.cache.map.get(&at)) {
                break Rc::clone(data);
            }
            let base = match self.entries[at].base {
                Base::Whole(_) => {
                    let (data, _) = self.inflate_whole(at)?;
                    let data = Rc::new(data);
                    self.cache.put(at, Rc::clone(&data));
                    break data;
                }
                Base::Ofs(base) => base,
                Base::Ref(id) => match self.by_id.get(&id) {
                    Some(&base) => base,
                    None => {
                        let offset = self.entries[at].offset;
                        return Err(self.malformed(
                            at,
                            offset,
                            format_args!("its base {id} is not in the pack"),
                        ));
                    }
                },
            };
            chain.push(at);
            if chain.len() > MAX_DELTA_DEPTH as usize {
                let offset = self.entries[index].offset;
                return Err(self.malformed(index, offset, "its delta chain is too long"));
            }
            at = base;
        };
        for delta_index in chain.into_iter().rev() {
            let (delta, _) = self.inflate_whole(delta_index)?;
            let next = apply_delta(&data, &delta, self.limits.max_object_bytes)
                .map_err(|what| self.malformed(delta_index, self.entries[delta_index].offset, what))?;
            data = Rc::new(next);
            self.cache.put(delta_index, Rc::clone(&data));
        }
        Ok(data)
    }

    /// Inflates an entry whole, within `max_object_bytes`.
    fn inflate_whole(&mut self, index: usize) -> Result<(Vec<u8>, usize), PushError> {
        let e = &self.entries[index];
        let size = usize::try_from(e.size)
            .ok()
            .filter(|&s| s <= self.limits.max_object_bytes)
            .ok_or(PushError::ObjectTooLarge {
                index: index + 1,
                count: self.count,
                offset: e.offset,
                size: e.size,
                max: self.limits.max_object_bytes,
            })?;
        let mut data = Vec::with_capacity(size);
        let end = self.inflate(index, &mut |chunk| data.extend_from_slice(chunk))?;
        Ok((data, end))
    }

    /// Inflates an entry's zlib stream, which must yield exactly its declared size, handing the
    /// output to `sink`; returns where the stream ends.
    fn inflate(&mut self, index: usize, sink: &mut dyn FnMut(&[u8])) -> Result<usize, PushError> {
        let (offset, start, size) = {
            let e = &self.entries[index];
            (e.offset, e.data, e.size)
        };
        self.inflater.reset(true);
        let mut pos = start;
        let mut produced = 0u64;
        loop {
            self.deadline(index)?;
            let input = self.pack.get(pos..).unwrap_or_default();
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self
                .inflater
                .decompress(input, &mut self.scratch, FlushDecompress::None);
            let consumed = (self.inflater.total_in() - in_before) as usize;
            let out = (self.inflater.total_out() - out_before) as usize;
            pos += consumed.min(input.len());
            produced += out as u64;
            if produced > size {
                return Err(self.malformed(
                    index,
                    offset,
                    format_args!("it inflates to more than the {size} bytes its header declares"),
                ));
            }
            sink(&self.scratch[..out]);
            match status {
                Err(e) => {
                    return Err(self.malformed(index, offset, format_args!("corrupt zlib stream ({e})")));
                }
                Ok(Status::StreamEnd) => break,
                Ok(_) if consumed == 0 && out == 0 => {
                    return Err(self.malformed(index, offset, "the pack ended inside its zlib stream"));
                }
                Ok(_) => {}
            }
        }
        if produced != size {
            return Err(self.malformed(
                index,
                offset,
                format_args!("it inflates to {produced} bytes, but its header declares {size}"),
            ));
        }
        Ok(pos)
    }

    /// Parses what was kept and counts what could not be resolved.
    fn finish(self) -> Result<PackObjects, PushError> {
        let mut out = PackObjects {
            objects: self.entries.len(),
            ..PackObjects::default()
        };
        for e in &self.entries {
            if !matches!(e.base, Base::Whole(_)) {
                out.deltas += 1;
            }
            if e.state == State::Pending {
                out.unresolved += 1;
            }
        }
        out.missing_bases = self.wait_id.keys().copied().collect();
        out.missing_bases.sort();
        let mut kept: Vec<_> = self.kept.into_iter().collect();
        kept.sort_by_key(|(index, _)| *index);
        for (index, raw) in kept {
            let State::Known(kind, id) = self.entries[index].state else {
                continue;
            };
            let bad = |what: String| PushError::BadObject {
                kind: kind.name(),
                id,
                what,
            };
            match kind {
                Kind::Commit => {
                    out.commits.entry(id).or_insert(parse_commit(&raw).map_err(bad)?);
                }
                Kind::Tree => {
                    out.trees
                        .entry(id)
                        .or_insert(parse_tree(&raw).map_err(bad)?.into());
                }
                Kind::Blob | Kind::Tag => {}
            }
        }
        Ok(out)
    }
}

fn object_hasher(kind: Kind, size: u64) -> Sha1 {
    let mut hasher = Sha1::new();
    hasher.update(format!("{} {size}\0", kind.name()).as_bytes());
    hasher
}

fn object_id(kind: Kind, data: &[u8]) -> Oid {
    let mut hasher = object_hasher(kind, data.len() as u64);
    hasher.update(data);
    Oid(hasher.finalize().into())
}

/// Rebuilds an object from its base and git delta instructions, checking every bound.
fn apply_delta(base: &[u8], delta: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut at = 0;
    let mut varint = |what: &str| -> Result<u64, String> {
        let (mut n, mut shift) = (0u64, 0u32);
        loop {
            let b = *delta
                .get(at)
                .ok_or_else(|| format!("its delta ends inside the {what} size"))?;
            at += 1;
            let part = u64::from(b & 0x7f);
            if shift > 63 || (part << shift) >> shift != part {
                return Err(format!("its delta's {what} size does not fit in 64 bits"));
            }
            n |= part << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
    };
    let base_size = varint("base")?;
    let result_size = varint("result")?;
    if base_size != base.len() as u64 {
        return Err(format!(
            "its delta expects a base of {base_size} bytes, but the base has {}",
            base.len()
        ));
    }
    let result_size = usize::try_from(result_size)
        .ok()
        .filter(|&s| s <= max)
        .ok_or_else(|| {
            format!("its delta rebuilds {result_size} bytes, more than the limit max_object_bytes ({max})")
        })?;
    let mut out = Vec::with_capacity(result_size);
    while let Some(&op) = delta.get(at) {
        at += 1;
        let piece = if op & 0x80 != 0 {
            let mut field = |bits: std::ops::Range<u32>| -> Result<usize, String> {
                let mut n = 0usize;
                for bit in bits.clone() {
                    if op & (1 << bit) != 0 {
                        let b = *delta.get(at).ok_or("its delta ends inside a copy instruction")?;
                        at += 1;
                        n |= usize::from(b) << (8 * (bit - bits.start));
                    }
                }
                Ok(n)
            };
            let offset = field(0..4)?;
            let size = match field(4..7)? {
                0 => 0x10000,
                n => n,
            };
            offset
                .checked_add(size)
                .and_then(|end| base.get(offset..end))
                .ok_or_else(|| {
                    format!(
                        "its delta copies bytes {offset}..{} of a {}-byte base",
                        offset.saturating_add(size),
                        base.len()
                    )
                })?
        } else if op != 0 {
            let n = usize::from(op);
            let piece = delta
                .get(at..at + n)
                .ok_or("its delta ends inside an insert instruction")?;
            at += n;
            piece
        } else {
            return Err("its delta holds the reserved instruction 0".into());
        };
        if out.len() + piece.len() > result_size {
            return Err(format!(
                "its delta writes more than the {result_size} bytes it declares"
            ));
        }
        out.extend_from_slice(piece);
    }
    if out.len() != result_size {
        return Err(format!(
            "its delta writes {} bytes, but declares {result_size}",
            out.len()
        ));
    }
    Ok(out)
}

/// The tree and parents of a raw commit: a `tree` line, then `parent` lines.
fn parse_commit(raw: &[u8]) -> Result<Commit, String> {
    let mut lines = raw.split(|&b| b == b'\n');
    let tree = lines
        .next()
        .and_then(|line| line.strip_prefix(b"tree "))
        .and_then(Oid::from_hex)
        .ok_or("it does not start with a \"tree <id>\" line")?;
    let mut parents = Vec::new();
    for line in lines {
        let Some(parent) = line.strip_prefix(b"parent ") else {
            break;
        };
        parents.push(Oid::from_hex(parent).ok_or("a \"parent\" line does not hold an object id")?);
    }
    Ok(Commit { tree, parents })
}

/// The entries of a raw tree: `<octal mode> <name>\0<20-byte id>`, repeated. Names that would
/// read as more than one path component, and duplicate names, are refused: git's fsck refuses
/// them too, and they would let a path hide behind another.
fn parse_tree(raw: &[u8]) -> Result<Vec<TreeEntry>, String> {
    let mut entries = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let at = entries.len() + 1;
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| format!("entry {at} has no mode"))?;
        let mode = &rest[..space];
        if mode.is_empty() || mode.len() > 7 || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
            return Err(format!(
                "entry {at} has the invalid mode \"{}\"",
                mode.escape_ascii()
            ));
        }
        let mode = mode.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
        rest = &rest[space + 1..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("entry {at} has no end to its name"))?;
        let name = &rest[..nul];
        if matches!(name, b"" | b"." | b"..") || name.contains(&b'/') {
            return Err(format!(
                "entry {at} has the invalid name \"{}\"",
                name.escape_ascii()
            ));
        }
        let id = rest
            .get(nul + 1..nul + 1 + OID_LEN)
            .ok_or_else(|| format!("entry {at} ends inside its object id"))?;
        let mut oid = Oid::ZERO;
        oid.0.copy_from_slice(id);
        entries.push(TreeEntry {
            mode,
            name: name.to_vec(),
            id: oid,
        });
        rest = &rest[nul + 1 + OID_LEN..];
    }
    let mut names: Vec<&[u8]> = entries.iter().map(|e| &e.name[..]).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "it has two entries named \"{}\"",
            twice[0].escape_ascii()
        ));
    }
    Ok(entries)
}

/// The objects the upstream already has, read through the GitHub API. `Ok(None)`: it does not
/// exist there. `Err`: the lookup failed (the answer becomes undecidable). `Sync` and `Send`
/// futures, so that [`fast_forward`] and [`changed_paths`] are `Send` futures too.
pub trait Remote: Sync {
    fn commit(&self, id: &Oid) -> impl Future<Output = Result<Option<Commit>, String>> + Send;
    fn tree(&self, id: &Oid) -> impl Future<Output = Result<Option<Vec<TreeEntry>>, String>> + Send;
    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`, both upstream. `Ok(None)`:
    /// cannot tell (one of them is unknown there, say).
    fn is_ancestor(
        &self,
        ancestor: &Oid,
        descendant: &Oid,
    ) -> impl Future<Output = Result<Option<bool>, String>> + Send;
}

/// How much upstream work one answer may take. The deadline is checked before each lookup; a
/// lookup that hangs is the caller's to time out (wrap the call in `tokio::time::timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_remote_calls: usize,
    pub deadline: Instant,
}

/// One answer's lookups: the pack first, then upstream (each object asked once).
struct Lookup<'a, R> {
    pack: &'a PackObjects,
    remote: &'a R,
    budget: &'a Budget,
    calls: usize,
    commits: HashMap<Oid, Commit>,
    trees: HashMap<Oid, Arc<[TreeEntry]>>,
}

impl<'a, R: Remote> Lookup<'a, R> {
    fn new(pack: &'a PackObjects, remote: &'a R, budget: &'a Budget) -> Self {
        Self {
            pack,
            remote,
            budget,
            calls: 0,
            commits: HashMap::new(),
            trees: HashMap::new(),
        }
    }

    fn in_time(&self, doing: impl fmt::Display) -> Result<(), String> {
        if Instant::now() > self.budget.deadline {
            return Err(format!("the deadline passed before {doing}"));
        }
        Ok(())
    }

    /// Counts one upstream call against the budget.
    fn spend(&mut self, doing: impl fmt::Display) -> Result<(), String> {
        self.in_time(&doing)?;
        if self.calls >= self.budget.max_remote_calls {
            return Err(format!(
                "more than {} upstream lookups would be needed (the next: {doing})",
                self.budget.max_remote_calls
            ));
        }
        self.calls += 1;
        Ok(())
    }

    /// Why an object found nowhere makes the answer undecidable.
    fn missing(&self, kind: &str, id: &Oid) -> String {
        let mut why = format!("{kind} {id} is neither in the pack nor upstream");
        if self.pack.unresolved > 0 {
            why.push_str("; ");
            why.push_str(&self.thin());
        }
        why
    }

    fn thin(&self) -> String {
        let bases: Vec<String> = self
            .pack
            .missing_bases
            .iter()
            .take(3)
            .map(Oid::to_string)
            .collect();
        format!(
            "the pack holds {} deltas against objects it does not hold (a thin pack: bases such as {}), \
             and it may be one of those",
            self.pack.unresolved,
            bases.join(", ")
        )
    }

    async fn commit(&mut self, id: &Oid) -> Result<Commit, String> {
        if let Some(commit) = self.pack.commits.get(id).or(self.commits.get(id)) {
            return Ok(commit.clone());
        }
        self.spend(format_args!("reading commit {id}"))?;
        match self.remote.commit(id).await {
            Ok(Some(commit)) => {
                self.commits.insert(*id, commit.clone());
                Ok(commit)
            }
            Ok(None) => Err(self.missing("commit", id)),
            Err(e) => Err(format!("reading commit {id} upstream: {e}")),
        }
    }

    async fn tree(&mut self, id: &Oid) -> Result<Arc<[TreeEntry]>, String> {
        if let Some(tree) = self.pack.trees.get(id).or(self.trees.get(id)) {
            return Ok(Arc::clone(tree));
        }
        self.spend(format_args!("reading tree {id}"))?;
        match self.remote.tree(id).await {
            Ok(Some(tree)) => {
                let tree: Arc<[TreeEntry]> = tree.into();
                self.trees.insert(*id, Arc::clone(&tree));
                Ok(tree)
            }
            Ok(None) => Err(self.missing("tree", id)),
            Err(e) => Err(format!("reading tree {id} upstream: {e}")),
        }
    }

    /// `Ok(false)`, unless unresolved deltas might hold the commit that would have made it true.
    fn no(&self, new: &Oid) -> Result<bool, String> {
        if self.pack.unresolved > 0 {
            return Err(format!(
                "no path from {new} to the old value was found, but {}",
                self.thin()
            ));
        }
        Ok(false)
    }
}

/// Whether updating a ref from `old` to `new` (both non-zero) is a fast-forward: `Ok(true)` when
/// `old` is an ancestor of `new`, `Ok(false)` when it is not, `Err(why)` when that cannot be told
/// (callers treat it as a force push).
///
/// Walks from `new` through the pack's commits; reaching `old` answers at once. Commits outside
/// the pack are upstream: each is asked whether `old` is its ancestor (any yes is a yes). When
/// `new` itself is not in the pack (`git push --force origin HEAD~1:main` sends no objects),
/// upstream is asked about `new` directly.
pub async fn fast_forward<R: Remote>(
    pack: &PackObjects,
    old: &Oid,
    new: &Oid,
    remote: &R,
    budget: &Budget,
) -> Result<bool, String> {
    if old == new {
        return Ok(true);
    }
    let mut lookup = Lookup::new(pack, remote, budget);
    let mut seen = HashSet::from([*new]);
    let mut stack = vec![*new];
    let mut boundary = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if id == *old {
            return Ok(true);
        }
        match pack.commits.get(&id) {
            Some(commit) => stack.extend(commit.parents.iter().filter(|p| seen.insert(**p))),
            None => {
                boundary.insert(id);
            }
        }
    }
    let mut unknown = None;
    for id in &boundary {
        lookup.spend(format_args!("asking whether {old} is an ancestor of {id}"))?;
        match remote.is_ancestor(old, id).await {
            Ok(Some(true)) => return Ok(true),
            Ok(Some(false)) => {}
            Ok(None) => {
                unknown.get_or_insert_with(|| {
                    format!("upstream cannot tell whether {old} is an ancestor of {id}")
                });
            }
            Err(e) => {
                unknown.get_or_insert_with(|| {
                    format!("asking upstream whether {old} is an ancestor of {id}: {e}")
                });
            }
        }
    }
    match unknown {
        Some(why) => Err(why),
        None => lookup.no(new),
    }
}

/// The file paths (`dir/sub/file`, sorted) an update of a ref to `new` changes: the difference
/// between the trees of `old` and `new` when `old` is given, and for every commit of the pack
/// reachable from `new`, its difference from each of its parents (every parent of a merge, which
/// may report more than the merge brought, never less) or, for a root commit, all its files.
///
/// A file added, removed, changed, or whose mode or type changed counts; a directory added or
/// removed counts as each file under it (read from the pack or upstream), so a pattern matcher
/// sees the same paths either way. `interesting(dir)` is asked for each directory (`"src"`,
/// `".github/workflows"`) whose content differs: when it says no, nothing under it is read or
/// reported. `Err(why)`: undecidable (a tree or commit needed was found nowhere, upstream failed,
/// the budget ran out); callers treat it as touching every protected path.
///
/// With `old` None (a new ref), only the pack's commits are compared: a new ref at a commit
/// upstream already has reports nothing. To ask what a new branch changes relative to the default
/// branch, pass the default branch's head as `old`.
pub async fn changed_paths<R: Remote>(
    pack: &PackObjects,
    old: Option<&Oid>,
    new: &Oid,
    remote: &R,
    interesting: &(dyn Fn(&str) -> bool + Sync),
    budget: &Budget,
) -> Result<Vec<String>, String> {
    let mut lookup = Lookup::new(pack, remote, budget);
    let mut pairs: Vec<(Option<Oid>, Oid)> = Vec::new();
    if let Some(old) = old {
        let from = lookup.commit(old).await?.tree;
        let to = lookup.commit(new).await?.tree;
        pairs.push((Some(from), to));
    }
    let mut seen = HashSet::from([*new]);
    let mut stack = vec![*new];
    while let Some(id) = stack.pop() {
        lookup.in_time(format_args!("walking commit {id}"))?;
        let Some(commit) = pack.commits.get(&id) else {
            continue;
        };
        if commit.parents.is_empty() {
            pairs.push((None, commit.tree));
        }
        for parent in &commit.parents {
            let from = lookup.commit(parent).await?.tree;
            pairs.push((Some(from), commit.tree));
            if seen.insert(*parent) {
                stack.push(*parent);
            }
        }
    }

    let mut paths = BTreeSet::new();
    let mut done = HashSet::new();
    let mut work: Vec<(Vec<u8>, Option<Oid>, Option<Oid>)> =
        pairs.into_iter().map(|(a, b)| (Vec::new(), a, Some(b))).collect();
    while let Some((prefix, a, b)) = work.pop() {
        if a == b || !done.insert((prefix.clone(), a, b)) {
            continue;
        }
        lookup.in_time(format_args!("comparing \"{}\"", String::from_utf8_lossy(&prefix)))?;
        let a_tree = match a {
            Some(id) => lookup.tree(&id).await?,
            None => Arc::from([]),
        };
        let b_tree = match b {
            Some(id) => lookup.tree(&id).await?,
            None => Arc::from([]),
        };
        let (a_map, b_map) = (by_name(&a_tree, a)?, by_name(&b_tree, b)?);
        let names: BTreeSet<&[u8]> = a_map.keys().chain(b_map.keys()).copied().collect();
        for name in names {
            let (x, y) = (a_map.get(name), b_map.get(name));
            if x.map(|e| (e.mode, e.id)) == y.map(|e| (e.mode, e.id)) {
                continue;
            }
            let mut path = prefix.clone();
            path.extend_from_slice(name);
            if x.is_some_and(|e| !e.is_tree()) || y.is_some_and(|e| !e.is_tree()) {
                paths.insert(String::from_utf8_lossy(&path).into_owned());
            }
            let subtree = |e: Option<&&TreeEntry>| e.filter(|e| e.is_tree()).map(|e| e.id);
            let (x, y) = (subtree(x), subtree(y));
            if x != y && interesting(&String::from_utf8_lossy(&path)) {
                path.push(b'/');
                work.push((path, x, y));
            }
        }
    }
    Ok(paths.into_iter().collect())
}

/// A tree's entries by name; two entries of one name make any diff of it ambiguous.
fn by_name(tree: &[TreeEntry], id: Option<Oid>) -> Result<BTreeMap<&[u8], &TreeEntry>, String> {
    let mut map = BTreeMap::new();
    for entry in tree {
        if map.insert(&entry.name[..], entry).is_some() {
            return Err(format!(
                "tree {} has two entries named \"{}\"",
                id.unwrap_or_default(),
                entry.name.escape_ascii()
            ));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use proptest::prelude::*;

    use crate::testgit::git;

    fn git_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        crate::testgit::git_in(dir, args, stdin, &[])
    }

    fn oid(hex: &str) -> Oid {
        hex.parse().unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_objects: 100_000,
            max_inflated_bytes: 64 << 20,
            max_object_bytes: 32 << 20,
            deadline: Instant::now() + Duration::from_secs(300),
        }
    }

    fn budget() -> Budget {
        Budget {
            max_remote_calls: 10_000,
            deadline: Instant::now() + Duration::from_secs(300),
        }
    }

    fn everything(_: &str) -> bool {
        true
    }

    /// Only what can hold workflows: `.github`, `.github/workflows` and below.
    fn workflows(dir: &str) -> bool {
        dir == ".github" || dir == ".github/workflows" || dir.starts_with(".github/workflows/")
    }

    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// A text file large enough that git stores its versions as deltas of each other.
    fn big(lines: usize, special: &str) -> String {
        let mut text: String = (0..lines)
            .map(|i| format!("line {i}: filler text so that the file is worth a delta\n"))
            .collect();
        text.insert_str(text.len() / 2, &format!("{special}\n"));
        text
    }

    /// An upstream bare repository (what the `Remote` reads) and a work tree that pushes to it.
    struct Repo {
        _tmp: tempfile::TempDir,
        up: PathBuf,
        work: PathBuf,
    }

    impl Repo {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let (up, work) = (tmp.path().join("up.git"), tmp.path().join("work"));
            git(tmp.path(), &["init", "-q", "--bare", up.to_str().unwrap()]);
            git(tmp.path(), &["init", "-q", work.to_str().unwrap()]);
            Self { _tmp: tmp, up, work }
        }

        fn write(&self, path: &str, text: &str) {
            let file = self.work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }

        fn remove(&self, path: &str) {
            let path = self.work.join(path);
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }

        fn git(&self, args: &[&str]) -> String {
            git(&self.work, args)
        }

        fn commit(&self, message: &str) -> String {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "--allow-empty", "-m", message]);
            self.git(&["rev-parse", "HEAD"])
        }

        /// Upstream's `branch` points at `rev` from now on (it receives what it lacks).
        fn publish(&self, rev: &str, branch: &str) {
            let refspec = format!("{rev}:refs/heads/{branch}");
            self.git(&["push", "-q", "--force", self.up.to_str().unwrap(), &refspec]);
        }

        /// What `git pack-objects --revs` writes for these revs (`new\n^old\n`).
        fn pack(&self, revs: &str, options: &[&str]) -> Vec<u8> {
            let mut args = vec!["pack-objects", "--stdout", "-q", "--revs"];
            args.extend_from_slice(options);
            git_in(&self.work, &args, revs.as_bytes())
        }

        fn remote(&self) -> GitRemote {
            GitRemote {
                dir: self.up.clone(),
                commits: AtomicUsize::new(0),
                trees: AtomicUsize::new(0),
                ancestry: AtomicUsize::new(0),
            }
        }

        /// What git says the update changes: `git diff old new`, and each commit of
        /// `new ^not...` against each parent (`diff-tree -m --root`).
        fn git_paths(&self, old: Option<&str>, new: &str, not: &[&str]) -> BTreeSet<String> {
            let split = |out: Vec<u8>| -> Vec<String> {
                out.split(|&b| b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8(p.to_vec()).unwrap())
                    .collect()
            };
            let mut paths = BTreeSet::new();
            if let Some(old) = old {
                let args = ["diff", "--no-renames", "--name-only", "-z", old, new];
                paths.extend(split(git_in(&self.work, &args, b"")));
            }
            let mut args = vec!["rev-list", new];
            let negated: Vec<String> = not.iter().map(|n| format!("^{n}")).collect();
            args.extend(negated.iter().map(String::as_str));
            for commit in self.git(&args).lines() {
                let args = [
                    "diff-tree",
                    "-r",
                    "-m",
                    "--root",
                    "--no-renames",
                    "--no-commit-id",
                    "--name-only",
                    "-z",
                    commit,
                ];
                paths.extend(split(git_in(&self.work, &args, b"")));
            }
            paths
        }
    }

    /// Paths whose every directory `interesting` accepts.
    fn pruned(paths: &BTreeSet<String>, interesting: fn(&str) -> bool) -> BTreeSet<String> {
        paths
            .iter()
            .filter(|p| {
                let mut dirs = p.match_indices('/').map(|(i, _)| &p[..i]);
                dirs.all(interesting)
            })
            .cloned()
            .collect()
    }

    /// Upstream, read with git from a bare repository, counting each kind of call.
    struct GitRemote {
        dir: PathBuf,
        commits: AtomicUsize,
        trees: AtomicUsize,
        ancestry: AtomicUsize,
    }

    impl GitRemote {
        /// (commit, tree, is_ancestor) calls so far.
        fn calls(&self) -> (usize, usize, usize) {
            (
                self.commits.load(Ordering::Relaxed),
                self.trees.load(Ordering::Relaxed),
                self.ancestry.load(Ordering::Relaxed),
            )
        }

        fn kind(&self, id: &Oid) -> Option<String> {
            let out = Command::new("git")
                .args(["cat-file", "-t", &id.to_string()])
                .current_dir(&self.dir)
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
        }
    }

    impl Remote for GitRemote {
        async fn commit(&self, id: &Oid) -> Result<Option<Commit>, String> {
            self.commits.fetch_add(1, Ordering::Relaxed);
            if self.kind(id).as_deref() != Some("commit") {
                return Ok(None);
            }
            let text = git(&self.dir, &["cat-file", "commit", &id.to_string()]);
            let mut lines = text.lines();
            let tree = oid(lines.next().unwrap().strip_prefix("tree ").unwrap());
            let parents = lines.map_while(|l| l.strip_prefix("parent ")).map(oid).collect();
            Ok(Some(Commit { tree, parents }))
        }

        async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, String> {
            self.trees.fetch_add(1, Ordering::Relaxed);
            if self.kind(id).as_deref() != Some("tree") {
                return Ok(None);
            }
            let out = git_in(&self.dir, &["ls-tree", "-z", &id.to_string()], b"");
            let entries = out
                .split(|&b| b == 0)
                .filter(|r| !r.is_empty())
                .map(|record| {
                    let tab = record.iter().position(|&b| b == b'\t').unwrap();
                    let meta = std::str::from_utf8(&record[..tab]).unwrap();
                    let mut fields = meta.split(' ');
                    let mode = u32::from_str_radix(fields.next().unwrap(), 8).unwrap();
                    let id = oid(fields.nth(1).unwrap());
                    TreeEntry {
                        mode,
                        name: record[tab + 1..].to_vec(),
                        id,
                    }
                })
                .collect();
            Ok(Some(entries))
        }

        async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, String> {
            self.ancestry.fetch_add(1, Ordering::Relaxed);
            let status = Command::new("git")
                .args(["merge-base", "--is-ancestor"])
                .args([ancestor.to_string(), descendant.to_string()])
                .current_dir(&self.dir)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            Ok(match status.code() {
                Some(0) => Some(true),
                Some(1) => Some(false),
                _ => None,
            })
        }
    }

    async fn paths(
        pack: &PackObjects,
        old: Option<&str>,
        new: &str,
        remote: &GitRemote,
        interesting: fn(&str) -> bool,
    ) -> Result<BTreeSet<String>, String> {
        let old = old.map(oid);
        let found = changed_paths(pack, old.as_ref(), &oid(new), remote, &interesting, &budget()).await?;
        let sorted = found.windows(2).all(|w| w[0] < w[1]);
        assert!(sorted, "sorted and without duplicates: {found:?}");
        Ok(found.into_iter().collect())
    }

    async fn ff(pack: &PackObjects, old: &str, new: &str, remote: &GitRemote) -> Result<bool, String> {
        fast_forward(pack, &oid(old), &oid(new), remote, &budget()).await
    }

    /// A pushed object `git rev-list --objects` lists, as git itself reads it.
    fn check_against_git(r: &Repo, pack: &PackObjects, revs: &[&str]) {
        let mut args = vec!["rev-list", "--objects"];
        args.extend_from_slice(revs);
        let listed = r.git(&args);
        let (mut commits, mut trees) = (0, 0);
        for line in listed.lines() {
            let id = line.split(' ').next().unwrap();
            match r.git(&["cat-file", "-t", id]).as_str() {
                "commit" => {
                    let commit = pack
                        .commit(&oid(id))
                        .unwrap_or_else(|| panic!("commit {id} decoded"));
                    assert_eq!(
                        commit.tree.to_string(),
                        r.git(&["rev-parse", &format!("{id}^{{tree}}")])
                    );
                    let parents = r.git(&["rev-list", "--parents", "-n1", id]);
                    let parents: Vec<Oid> = parents.split(' ').skip(1).map(oid).collect();
                    assert_eq!(commit.parents, parents);
                    commits += 1;
                }
                "tree" => {
                    let tree = pack.tree(&oid(id)).unwrap_or_else(|| panic!("tree {id} decoded"));
                    let names: Vec<String> = tree
                        .iter()
                        .map(|e| String::from_utf8(e.name.clone()).unwrap())
                        .collect();
                    let listed = r.git(&["ls-tree", "--name-only", id]);
                    assert_eq!(names, listed.lines().collect::<Vec<_>>());
                    trees += 1;
                }
                _ => {}
            }
        }
        assert!(commits > 0 && trees > 0);
    }

    // ---- decoding ------------------------------------------------------------------------------

    /// A history whose big file, big directory and trees change a little in each commit, so git
    /// stores most versions as deltas (chains of them, for blobs).
    fn history() -> (Repo, Vec<String>) {
        let r = Repo::new();
        let mut next = xorshift(7);
        let mut lines: Vec<String> = (0..600)
            .map(|i| format!("line {i}: filler text, worth a delta\n"))
            .collect();
        let mut commits = Vec::new();
        for version in 0..5 {
            // Each version rewrites its own stretch, so it is closest to the version before it
            // and git chains the deltas.
            for line in &mut lines[version * 100..version * 100 + 30] {
                *line = format!("version {version}: {:016x}{:016x}\n", next(), next());
            }
            r.write("big.txt", &lines.concat());
            for i in 0..120 {
                r.write(&format!("many/file-{i:03}.txt"), &format!("file {i}\n"));
            }
            r.write(&format!("many/added-{version}.txt"), "more\n");
            r.write(&format!("src/deep/nested/v{version}.rs"), "fn main() {}\n");
            commits.push(r.commit(&format!("version {version}")));
        }
        (r, commits)
    }

    /// (type, depth) of each deltified object, as `git verify-pack -v` reports them.
    fn delta_depths(r: &Repo, pack: &[u8]) -> Vec<(String, usize)> {
        let file = r.work.join("check.pack");
        std::fs::write(&file, pack).unwrap();
        git(&r.work, &["index-pack", file.to_str().unwrap()]);
        let verify = r.git(&["verify-pack", "-v", r.work.join("check.idx").to_str().unwrap()]);
        verify
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() == 7).then(|| (f[1].to_owned(), f[5].parse().unwrap()))
            })
            .collect()
    }

    #[test]
    fn ofs_and_ref_delta_packs_decode_to_what_git_reads() {
        let (r, commits) = history();
        let head = commits.last().unwrap();
        for options in [&["--delta-base-offset"][..], &[]] {
            let raw = r.pack(&format!("{head}\n"), options);
            let depths = delta_depths(&r, &raw);
            assert!(
                depths.iter().any(|(t, _)| t == "tree"),
                "trees are deltas: {options:?}"
            );
            assert!(
                depths.iter().any(|(t, d)| t == "blob" && *d >= 2),
                "blob delta chains: {options:?}"
            );
            let pack = decode(&raw, &limits()).unwrap();
            assert_eq!(
                pack.objects(),
                r.git(&["rev-list", "--objects", head]).lines().count()
            );
            assert_eq!(pack.deltas(), depths.len());
            assert_eq!((pack.unresolved(), pack.missing_bases()), (0, &[][..]));
            check_against_git(&r, &pack, &[head]);
        }
    }

    #[test]
    fn empty_input_and_empty_pack_hold_nothing() {
        let r = Repo::new();
        let pack = decode(&[], &limits()).unwrap();
        assert_eq!((pack.objects(), pack.unresolved()), (0, 0));
        let empty = r.pack("", &[]);
        assert_eq!(decode(&empty, &limits()).unwrap().objects(), 0);
    }

    #[test]
    fn limits_are_errors_naming_the_limit() {
        let (r, commits) = history();
        let raw = r.pack(&format!("{}\n", commits[4]), &["--delta-base-offset"]);
        let count = decode(&raw, &limits()).unwrap().objects();

        let few = Limits {
            max_objects: count - 1,
            ..limits()
        };
        let error = decode(&raw, &few).unwrap_err().to_string();
        assert!(
            error.contains(&format!("holds {count} objects, more than the limit max_objects")),
            "{error}"
        );
        let exact = Limits {
            max_objects: count,
            ..limits()
        };
        assert!(decode(&raw, &exact).is_ok());

        // The tree of `many/` is over 4 KiB.
        let small = Limits {
            max_object_bytes: 4096,
            ..limits()
        };
        let error = decode(&raw, &small).unwrap_err();
        assert!(
            matches!(error, PushError::ObjectTooLarge { max: 4096, .. }),
            "{error}"
        );

        let little = Limits {
            max_inflated_bytes: 10_000,
            ..limits()
        };
        let error = decode(&raw, &little).unwrap_err().to_string();
        assert!(
            error.contains("more than the limit max_inflated_bytes (10000)"),
            "{error}"
        );
        // Blobs do not count: the commits and trees alone fit in what their sizes add up to.
        let kept: u64 = r
            .git(&["rev-list", "--objects", &commits[4]])
            .lines()
            .map(|l| l.split(' ').next().unwrap())
            .filter(|id| r.git(&["cat-file", "-t", id]) != "blob")
            .map(|id| r.git(&["cat-file", "-s", id]).parse::<u64>().unwrap())
            .sum();
        let enough = Limits {
            max_inflated_bytes: kept,
            ..limits()
        };
        assert!(decode(&raw, &enough).is_ok());

        let late = Limits {
            deadline: Instant::now() - Duration::from_millis(1),
            ..limits()
        };
        let error = decode(&raw, &late).unwrap_err().to_string();
        assert!(error.contains("longer than its deadline (0 of its"), "{error}");
    }

    /// Recomputes the trailing checksum, so damage reaches the decoder instead of stopping at
    /// the checksum.
    fn reseal(pack: &mut [u8]) {
        if pack.len() >= HEADER_LEN + OID_LEN {
            let body = pack.len() - OID_LEN;
            let sum = Sha1::digest(&pack[..body]);
            pack[body..].copy_from_slice(&sum);
        }
    }

    #[test]
    fn corrupt_packs_are_clean_errors() {
        let (r, commits) = history();
        let raw = r.pack(&format!("{}\n", commits[1]), &["--delta-base-offset"]);
        let error = |pack: &[u8]| decode(pack, &limits()).unwrap_err().to_string();

        let mut magic = raw.clone();
        magic[0] = b'K';
        assert!(error(&magic).contains("found \"KACK\""));
        let mut version = raw.clone();
        version[7] = 7;
        assert!(error(&version).contains("unsupported pack version 7"));
        assert!(error(&raw[..raw.len() / 2]).contains("checksum does not match"));
        assert!(error(&raw[..15]).contains("too short to hold its trailing checksum"));
        assert!(error(&[raw.clone(), b"x".to_vec()].concat()).contains("checksum does not match"));

        // Any flipped byte is caught by the checksum.
        for at in (0..raw.len()).step_by(7) {
            let mut bad = raw.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad, &limits()).is_err(), "flipped byte {at}");
        }

        // Past the checksum, the decoder itself names the object: in a zlib stream...
        let mut zlib = raw.clone();
        zlib[HEADER_LEN + 4] ^= 0xff;
        reseal(&mut zlib);
        let message = error(&zlib);
        assert!(message.starts_with("pack: object 1 of"), "{message}");
        // ...in a declared size (the first object is a commit of a few hundred bytes)...
        let mut size = raw.clone();
        size[HEADER_LEN] ^= 0x01;
        reseal(&mut size);
        let message = error(&size);
        assert!(message.contains("its header declares"), "{message}");
        // ...and an object count larger than the objects there.
        let mut count = raw.clone();
        count[11] += 1;
        reseal(&mut count);
        let message = error(&count);
        assert!(message.contains("(at byte"), "{message}");
    }

    #[test]
    fn deltas_are_applied_within_bounds() {
        let base = b"0123456789abcdef";
        // base 16, result 9: copy 4 bytes from offset 2, insert "xyz", copy 2 from offset 14.
        let delta = [16, 9, 0x91, 2, 4, 3, b'x', b'y', b'z', 0x91, 14, 2];
        assert_eq!(apply_delta(base, &delta, 100).unwrap(), b"2345xyzef");
        let err = |delta: &[u8]| apply_delta(base, delta, 100).unwrap_err();
        assert!(err(&[15, 1, 1, b'a']).contains("expects a base of 15 bytes"));
        assert!(err(&[16, 0xc8, 0x01]).contains("more than the limit max_object_bytes (100)"));
        assert!(err(&[16, 4, 0x91, 14, 4]).contains("copies bytes 14..18 of a 16-byte base"));
        // Size 0 in a copy means 0x10000.
        assert!(err(&[16, 4, 0x81, 0]).contains("copies bytes 0..65536"));
        assert!(err(&[16, 2, 3, b'a', b'b', b'c']).contains("writes more than the 2 bytes"));
        assert!(err(&[16, 3, 0]).contains("reserved instruction 0"));
        assert!(err(&[16, 3, 1, b'a']).contains("writes 1 bytes, but declares 3"));
        assert!(err(&[16, 3, 5, b'a']).contains("ends inside an insert"));
        assert!(err(&[16, 3, 0x83, 1]).contains("ends inside a copy"));
        assert!(err(&[0x80]).contains("ends inside the base size"));
    }

    #[test]
    fn hostile_trees_and_commits_are_refused() {
        let entry = |mode: &str, name: &[u8]| [mode.as_bytes(), b" ", name, b"\0", &[7; 20]].concat();
        assert!(
            parse_tree(&entry("100644", b"a/b"))
                .unwrap_err()
                .contains("invalid name")
        );
        assert!(
            parse_tree(&entry("40000", b".."))
                .unwrap_err()
                .contains("invalid name")
        );
        assert!(
            parse_tree(&entry("40000", b""))
                .unwrap_err()
                .contains("invalid name")
        );
        assert!(
            parse_tree(&entry("10x644", b"a"))
                .unwrap_err()
                .contains("invalid mode")
        );
        let twice = [entry("100644", b"a"), entry("40000", b"a")].concat();
        assert!(
            parse_tree(&twice)
                .unwrap_err()
                .contains("two entries named \"a\"")
        );
        assert!(
            parse_tree(&entry("100644", b"a")[..10])
                .unwrap_err()
                .contains("ends inside")
        );
        let tree = parse_tree(&[entry("40000", b".github"), entry("100755", b"\xff")].concat()).unwrap();
        assert!(tree[0].is_tree() && !tree[1].is_tree() && tree[1].mode == 0o100755);

        let tree = "tree 0123456789012345678901234567890123456789\n";
        assert!(parse_commit(b"parent x\n").is_err());
        assert!(parse_commit(format!("{tree}parent 12\n").as_bytes()).is_err());
        let commit =
            parse_commit(format!("{tree}parent {}\nauthor x\n\nparent no", "a".repeat(40)).as_bytes());
        assert_eq!(commit.unwrap().parents, vec![Oid([0xaa; 20])]);
    }

    fn sample_packs() -> &'static [Vec<u8>] {
        static PACKS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        PACKS.get_or_init(|| {
            let r = Repo::new();
            for version in 0..3 {
                r.write("big.txt", &big(60 + 5 * version, &format!("v{version}")));
                r.write("dir/a.txt", &format!("a{version}\n"));
                r.commit("c");
            }
            let ofs = r.pack("HEAD\n", &["--delta-base-offset"]);
            let refs = r.pack("HEAD\n", &[]);
            let thin = r.pack("HEAD\n^HEAD~1\n", &["--thin"]);
            vec![ofs, refs, thin]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..400),
            pack in any::<bool>(),
        ) {
            if pack {
                bytes.splice(0..0, *b"PACK\0\0\0\x02\0\0\0\x03");
                bytes.extend_from_slice(&[0; OID_LEN]);
                reseal(&mut bytes);
            }
            let _ = decode(&bytes, &limits());
        }

        #[test]
        fn damaged_real_packs_never_panic(
            which in 0..3usize,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            sealed in any::<bool>(),
        ) {
            let mut pack = sample_packs()[which].clone();
            for (at, xor) in flips {
                let at = at % pack.len();
                pack[at] ^= xor;
            }
            if cut % 3 == 0 {
                pack.truncate(cut % pack.len());
            }
            if sealed {
                reseal(&mut pack);
            }
            let _ = decode(&pack, &limits());
        }

        #[test]
        fn arbitrary_deltas_never_panic(
            base in proptest::collection::vec(any::<u8>(), 0..64),
            delta in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(out) = apply_delta(&base, &delta, 1 << 16) {
                prop_assert!(out.len() <= 1 << 16);
            }
        }
    }

    // ---- fast-forward and changed paths, against git ------------------------------------------

    /// main at `a` upstream; locally `b` and `c` on top of it.
    fn linear() -> (Repo, String, String, String) {
        let r = Repo::new();
        r.write("README", "hello\n");
        r.write("src/lib.rs", &big(300, "v1"));
        r.write("src/deep/nested/x.rs", "x1\n");
        r.write("docs/guide.md", &big(200, "g1"));
        let a = r.commit("a");
        r.publish(&a, "main");
        r.write("src/lib.rs", &big(310, "v2"));
        let b = r.commit("b");
        r.write("src/deep/nested/x.rs", "x2\n");
        r.write("src/deep/nested/new.rs", "new\n");
        let c = r.commit("c");
        (r, a, b, c)
    }

    #[tokio::test]
    async fn fast_forward_push() {
        let (r, a, b, c) = linear();
        for options in [&["--delta-base-offset"][..], &[]] {
            let pack = decode(&r.pack(&format!("{c}\n^{a}\n"), options), &limits()).unwrap();
            check_against_git(&r, &pack, &[&c, &format!("^{a}")]);
            let remote = r.remote();
            assert_eq!(ff(&pack, &a, &c, &remote).await, Ok(true));
            assert_eq!(ff(&pack, &b, &c, &remote).await, Ok(true));
            assert_eq!(
                remote.calls(),
                (0, 0, 0),
                "the old value is a pushed commit's parent"
            );

            let found = paths(&pack, Some(&a), &c, &remote, everything).await.unwrap();
            assert_eq!(found, r.git_paths(Some(&a), &c, &[&a]));
            assert!(found.contains("src/deep/nested/x.rs") && found.contains("src/deep/nested/new.rs"));
            assert!(!found.contains("docs/guide.md") && !found.contains("README"));
        }
    }

    #[tokio::test]
    async fn force_push_is_not_a_fast_forward() {
        let (r, a, _, c) = linear();
        r.publish(&c, "main");
        // Rewrite history: drop b and c, commit something else on a.
        r.git(&["reset", "-q", "--hard", &a]);
        r.write("src/lib.rs", "rewritten\n");
        let d = r.commit("d");
        let pack = decode(&r.pack(&format!("{d}\n^{c}\n"), &[]), &limits()).unwrap();
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &d, &remote).await, Ok(false));
        assert_eq!(
            remote.calls(),
            (0, 0, 1),
            "one question about the boundary commit a"
        );
        let found = paths(&pack, Some(&c), &d, &remote, everything).await.unwrap();
        assert_eq!(found, r.git_paths(Some(&c), &d, &[&c]));
        assert!(
            found.contains("src/deep/nested/new.rs"),
            "a file the rewrite drops counts"
        );

        // A history with nothing in common: every ancestor is in the pack and none is `c`.
        r.git(&["checkout", "-q", "--orphan", "other"]);
        r.write("only.txt", "alone\n");
        let e = r.commit("e");
        let pack = decode(&r.pack(&format!("{e}\n^{c}\n"), &[]), &limits()).unwrap();
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &e, &remote).await, Ok(false));
        assert_eq!(remote.calls(), (0, 0, 0));
    }

    #[tokio::test]
    async fn pushing_a_commit_upstream_already_has() {
        let (r, a, b, c) = linear();
        r.publish(&c, "main");
        // `git push --force origin HEAD~1:main`: the pack holds no objects.
        let pack = decode(&r.pack(&format!("{b}\n^{c}\n"), &[]), &limits()).unwrap();
        assert_eq!(pack.objects(), 0);
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &b, &remote).await, Ok(false));
        assert_eq!(remote.calls(), (0, 0, 1));
        let found = paths(&pack, Some(&c), &b, &remote, everything).await.unwrap();
        assert_eq!(
            found,
            BTreeSet::from(["src/deep/nested/new.rs".into(), "src/deep/nested/x.rs".into()])
        );

        // Moving main forward to a commit another branch already has upstream.
        r.publish(&a, "main");
        let remote = r.remote();
        assert_eq!(ff(&pack, &a, &c, &remote).await, Ok(true));
        assert_eq!(remote.calls(), (0, 0, 1));
    }

    #[tokio::test]
    async fn branch_creation() {
        let (r, a, _, c) = linear();
        let pack = decode(
            &r.pack(&format!("{c}\n^{a}\n"), &["--delta-base-offset"]),
            &limits(),
        )
        .unwrap();
        let remote = r.remote();
        let found = paths(&pack, None, &c, &remote, everything).await.unwrap();
        assert_eq!(found, r.git_paths(None, &c, &[&a]));
        assert!(found.contains("src/lib.rs"));

        // A new ref at a commit upstream has: no objects, nothing new.
        let empty = decode(&r.pack(&format!("{a}\n^{a}\n"), &[]), &limits()).unwrap();
        assert_eq!(
            paths(&empty, None, &a, &remote, everything).await,
            Ok(BTreeSet::new())
        );
        // Against the default branch instead, what the branch differs by.
        let found = paths(&pack, Some(&a), &c, &remote, everything).await.unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &c, &[&a]));

        // The first push to an empty repository: root commit and all.
        let pack = decode(&r.pack(&format!("{c}\n"), &[]), &limits()).unwrap();
        let found = paths(&pack, None, &c, &remote, everything).await.unwrap();
        assert!(found.contains("README") && found.contains("docs/guide.md"));
        assert_eq!(found, r.git_paths(None, &c, &[]));
    }

    #[tokio::test]
    async fn merge_commits() {
        let (r, a, _, c) = linear();
        r.git(&["checkout", "-q", "-b", "feature", &a]);
        r.write(".github/workflows/ci.yml", "on: push\n");
        r.write("src/feature.rs", "feature\n");
        let f = r.commit("feature");
        r.git(&["checkout", "-q", "main"]);
        r.git(&["merge", "-q", "--no-ff", "-m", "merge", "feature"]);
        let m = r.git(&["rev-parse", "HEAD"]);
        let pack = decode(
            &r.pack(&format!("{m}\n^{a}\n"), &["--delta-base-offset"]),
            &limits(),
        )
        .unwrap();
        let remote = r.remote();
        assert_eq!(ff(&pack, &a, &m, &remote).await, Ok(true));
        assert_eq!(ff(&pack, &f, &m, &remote).await, Ok(true));
        let found = paths(&pack, Some(&a), &m, &remote, everything).await.unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &m, &[&a]));
        assert!(found.contains(".github/workflows/ci.yml") && found.contains("src/deep/nested/x.rs"));

        // The feature branch is already upstream: the merge's second parent is a boundary.
        r.publish(&c, "main");
        r.publish(&f, "feature");
        let pack = decode(&r.pack(&format!("{m}\n^{c}\n^{f}\n"), &[]), &limits()).unwrap();
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &m, &remote).await, Ok(true));
        let found = paths(&pack, Some(&c), &m, &remote, workflows).await.unwrap();
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
    }

    #[tokio::test]
    async fn type_and_mode_changes_count() {
        let r = Repo::new();
        r.write("docs/a.md", "a\n");
        r.write("docs/sub/b.md", "b\n");
        r.write("run.sh", "echo\n");
        r.write("link", "x\n");
        let a = r.commit("a");
        r.publish(&a, "main");
        r.remove("docs");
        r.write("docs", "now a file\n");
        r.git(&["update-index", "--chmod=+x", "run.sh"]);
        r.git(&["commit", "-q", "-m", "chmod"]);
        r.remove("link");
        std::os::unix::fs::symlink("run.sh", r.work.join("link")).unwrap();
        let b = r.commit("b");
        let pack = decode(&r.pack(&format!("{b}\n^{a}\n"), &[]), &limits()).unwrap();
        let found = paths(&pack, Some(&a), &b, &r.remote(), everything).await.unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &b, &[&a]));
        let expected = ["docs", "docs/a.md", "docs/sub/b.md", "link", "run.sh"];
        assert_eq!(found, expected.iter().map(|p| p.to_string()).collect());
    }

    /// A repository with many directories besides `.github`, upstream at the first commit.
    fn sprawling() -> (Repo, String) {
        let r = Repo::new();
        for dir in ["src/a", "src/b", "src/c", "docs", "tests/x"] {
            for i in 0..20 {
                r.write(&format!("{dir}/file{i}.rs"), &format!("{dir} {i}\n"));
            }
        }
        r.write(".github/CODEOWNERS", "* @owner\n");
        let a = r.commit("a");
        r.publish(&a, "main");
        (r, a)
    }

    #[tokio::test]
    async fn workflow_changes_are_found_and_other_directories_pruned() {
        let (r, a) = sprawling();
        let check = async |old: &str, new: &str| {
            let pack = decode(
                &r.pack(&format!("{new}\n^{old}\n"), &["--delta-base-offset"]),
                &limits(),
            )
            .unwrap();
            let truth = r.git_paths(Some(old), new, &[old]);
            let all = r.remote();
            assert_eq!(
                paths(&pack, Some(old), new, &all, everything).await.unwrap(),
                truth
            );
            let only = r.remote();
            let found = paths(&pack, Some(old), new, &only, workflows).await.unwrap();
            assert_eq!(found, pruned(&truth, workflows));
            (found, only.calls(), all.calls())
        };

        // Added, alongside changes deep in src/: the pruned walk never reads src/ upstream.
        r.write(".github/workflows/ci.yml", "on: push\n");
        r.write("src/c/file3.rs", "changed\n");
        r.write("docs/file1.rs", "changed\n");
        let b = r.commit("b");
        let (found, only, all) = check(&a, &b).await;
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        // commit a, then the trees of a at the root and in .github.
        assert_eq!(only, (1, 2, 0));
        // ...against the root, src, src/c, docs and .github without pruning.
        assert_eq!(all, (1, 5, 0));
        r.publish(&b, "main");

        // Modified.
        r.write(".github/workflows/ci.yml", "on: pull_request\n");
        r.write("src/a/file0.rs", "changed\n");
        let c = r.commit("c");
        let (found, only, all) = check(&b, &c).await;
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        assert_eq!(only, (1, 3, 0));
        assert_eq!(all, (1, 5, 0));
        r.publish(&c, "main");

        // Deleted, with the whole directory: its files are read upstream.
        r.remove(".github/workflows");
        r.write("tests/x/file2.rs", "changed\n");
        let d = r.commit("d");
        let (found, only, _) = check(&c, &d).await;
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        assert_eq!(only, (1, 3, 0));

        // Moved under a directory the filter prunes: still reported where it left.
        r.publish(&c, "main");
        r.git(&["reset", "-q", "--hard", &c]);
        r.git(&["mv", ".github/workflows/ci.yml", "docs/ci.yml"]);
        let e = r.commit("e");
        let (found, _, _) = check(&c, &e).await;
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
    }

    fn not_many(dir: &str) -> bool {
        dir != "many"
    }

    #[tokio::test]
    async fn thin_packs_are_answered_only_when_provable() {
        // A root tree of two entries, which git stores whole.
        let r = Repo::new();
        for i in 0..300 {
            r.write(&format!("many/file-{i:03}.txt"), &format!("file {i}\n"));
        }
        r.write("big.txt", &big(400, "v1"));
        let b = r.commit("b");
        r.publish(&b, "main");

        // Only big.txt changes: its new version is a delta against the upstream blob.
        r.write("big.txt", &big(410, "v2"));
        let c = r.commit("c");
        let raw = r.pack(&format!("{c}\n^{b}\n"), &["--thin", "--delta-base-offset"]);
        let pack = decode(&raw, &limits()).unwrap();
        let old_blob = oid(&r.git(&["rev-parse", &format!("{b}:big.txt")]));
        assert_eq!((pack.unresolved(), pack.missing_bases()), (1, &[old_blob][..]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &b, &c, &remote).await, Ok(true));
        let found = paths(&pack, Some(&b), &c, &remote, everything).await;
        assert_eq!(
            found,
            Ok(BTreeSet::from(["big.txt".into()])),
            "the commit and trees are whole"
        );
        r.publish(&c, "main");

        // A file added to many/: its 300-entry tree is a delta against the upstream tree.
        r.write("many/file-new.txt", "new\n");
        r.write("big.txt", &big(420, "v3"));
        let d = r.commit("d");
        let raw = r.pack(&format!("{d}\n^{c}\n"), &["--thin"]);
        let pack = decode(&raw, &limits()).unwrap();
        let old_tree = oid(&r.git(&["rev-parse", &format!("{c}:many")]));
        assert!(
            pack.missing_bases().contains(&old_tree),
            "{:?}",
            pack.missing_bases()
        );
        let root = oid(&r.git(&["rev-parse", &format!("{d}^{{tree}}")]));
        assert!(pack.tree(&root).is_some(), "the root tree is whole");
        let remote = r.remote();
        assert_eq!(
            ff(&pack, &c, &d, &remote).await,
            Ok(true),
            "the commit itself is whole"
        );
        let error = paths(&pack, Some(&c), &d, &remote, everything).await.unwrap_err();
        let new_tree = r.git(&["rev-parse", &format!("{d}:many")]);
        assert!(
            error.starts_with(&format!("tree {new_tree} is neither in the pack nor upstream")),
            "{error}"
        );
        assert!(error.contains("(a thin pack: bases such as"), "{error}");
        // Pruned away, the missing tree is not needed.
        let found = paths(&pack, Some(&c), &d, &remote, not_many).await;
        assert_eq!(found, Ok(BTreeSet::from(["big.txt".into()])));

        // A commit that is a delta against an upstream commit (built by hand: git sends commits
        // whole).
        let amended = thin_commit_pack(&r, &c, &d);
        let pack = decode(&amended, &limits()).unwrap();
        assert_eq!((pack.objects(), pack.unresolved()), (1, 1));
        let remote = r.remote();
        let error = ff(&pack, &c, &d, &remote).await.unwrap_err();
        assert!(error.contains("upstream cannot tell whether"), "{error}");
        let error = paths(&pack, Some(&c), &d, &remote, workflows).await.unwrap_err();
        assert!(
            error.starts_with(&format!("commit {d} is neither in the pack nor upstream")),
            "{error}"
        );
        assert!(error.contains("thin pack"), "{error}");
        // Were the upstream to answer "no" for a commit it does not have, the answer stays
        // undecidable: the missing commit may be in the pack.
        let no = SaysNo(r.remote());
        let error = fast_forward(&pack, &oid(&c), &oid(&d), &no, &budget())
            .await
            .unwrap_err();
        assert!(
            error.contains("no path from") && error.contains("thin pack"),
            "{error}"
        );
    }

    /// A remote that answers "not an ancestor" for commits it does not have.
    struct SaysNo(GitRemote);

    impl Remote for SaysNo {
        async fn commit(&self, id: &Oid) -> Result<Option<Commit>, String> {
            self.0.commit(id).await
        }

        async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, String> {
            self.0.tree(id).await
        }

        async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, String> {
            Ok(Some(
                self.0.is_ancestor(ancestor, descendant).await?.unwrap_or(false),
            ))
        }
    }

    /// A pack holding only commit `new`, as a REF_DELTA against commit `base` (which the
    /// upstream has): git's delta format, built by hand (insert everything).
    fn thin_commit_pack(r: &Repo, base: &str, new: &str) -> Vec<u8> {
        let base_len: usize = r.git(&["cat-file", "-s", base]).parse().unwrap();
        let content = git_in(&r.work, &["cat-file", "commit", new], b"");
        let varint = |mut n: usize| {
            let mut out = Vec::new();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        };
        let mut delta = [varint(base_len), varint(content.len())].concat();
        for piece in content.chunks(127) {
            delta.push(piece.len() as u8);
            delta.extend_from_slice(piece);
        }
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        let mut size = delta.len();
        let mut byte = 0x70 | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        pack.extend_from_slice(&oid(base).0);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&delta).unwrap();
        pack.extend_from_slice(&z.finish().unwrap());
        pack.extend_from_slice(&[0; OID_LEN]);
        reseal(&mut pack);
        pack
    }

    #[tokio::test]
    async fn budgets_make_answers_undecidable() {
        let (r, a, _, c) = linear();
        r.publish(&c, "main");
        let pack = decode(&r.pack(&format!("{a}\n^{c}\n"), &[]), &limits()).unwrap();
        let remote = r.remote();
        let none = Budget {
            max_remote_calls: 0,
            ..budget()
        };
        let error = fast_forward(&pack, &oid(&c), &oid(&a), &remote, &none)
            .await
            .unwrap_err();
        assert!(
            error.contains("more than 0 upstream lookups would be needed"),
            "{error}"
        );
        let error = changed_paths(&pack, Some(&oid(&c)), &oid(&a), &remote, &everything, &none).await;
        assert!(error.unwrap_err().contains("(the next: reading commit"));
        let late = Budget {
            deadline: Instant::now() - Duration::from_millis(1),
            ..budget()
        };
        let error = fast_forward(&pack, &oid(&c), &oid(&a), &remote, &late)
            .await
            .unwrap_err();
        assert!(
            error.starts_with("the deadline passed before asking whether"),
            "{error}"
        );
        assert_eq!(remote.calls(), (0, 0, 0));
    }

    #[test]
    fn answers_are_send_futures() {
        fn send<T: Send>(_: &T) {}
        let (pack, remote, budget) = (PackObjects::default(), Repo::new().remote(), budget());
        let id = Oid::ZERO;
        send(&fast_forward(&pack, &id, &id, &remote, &budget));
        send(&changed_paths(&pack, None, &id, &remote, &everything, &budget));
    }

    // ---- memory on a big pack ------------------------------------------------------------------

    /// Decodes a ~50 MB pack of blobs (half of them deltas) in a child process, which reports how
    /// far its resident set grew past the pack it had read; prints the decode speed against
    /// `git index-pack` on the same pack.
    #[test]
    fn decoding_a_big_pack_of_blobs_keeps_memory_bounded() {
        let r = Repo::new();
        let mut next = xorshift(0x5EED);
        let mut files = Vec::new();
        for i in 0..64 {
            // Half random bytes (stored as they are), half hex text (which deflates).
            let mut data: Vec<u8> = (0..(1 << 19) / 8).flat_map(|_| next().to_le_bytes()).collect();
            data.extend((0..(1 << 19) / 16).flat_map(|_| format!("{:016x}", next()).into_bytes()));
            std::fs::create_dir_all(r.work.join("blobs")).unwrap();
            std::fs::write(r.work.join(format!("blobs/{i}.bin")), &data).unwrap();
            files.push(data);
        }
        r.commit("a");
        for (i, data) in files.iter_mut().enumerate() {
            data[1000..1016].copy_from_slice(b"changed in b....");
            std::fs::write(r.work.join(format!("blobs/{i}.bin")), &data).unwrap();
        }
        let b = r.commit("b");
        let raw = r.pack(&format!("{b}\n"), &["--delta-base-offset", "--window=2"]);
        let file = r.work.join("big.pack");
        std::fs::write(&file, &raw).unwrap();

        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "policy::push::tests::memory_child",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads=1"])
            .env("PUSH_MEMORY_PACK", &file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The test harness prints the child test's name on the same line.
        let report = stdout
            .split_once("memory_child: ")
            .expect("a report")
            .1
            .lines()
            .next()
            .unwrap();
        let field = |name: &str| -> f64 {
            let value = report.split(' ').find_map(|f| f.strip_prefix(name)).unwrap();
            value.parse().unwrap()
        };
        assert!(field("pack_bytes=") > 48e6, "{report}");
        assert!(field("deltas=") >= 32.0, "blob deltas too: {report}");
        let growth = field("growth_bytes=");
        // A few objects at a time (a delta's base and result, 1 MiB each here, and the inflater's
        // buffers), never the pack's 60 MB.
        assert!(growth < 16.0 * 1024.0 * 1024.0, "{report}");

        let start = Instant::now();
        git_in(&r.work, &["index-pack", "--stdin"], &raw);
        let git_secs = start.elapsed().as_secs_f64();
        println!(
            "{report} git_index_pack_secs={git_secs:.2} ratio={:.1}",
            field("secs=") / git_secs
        );
    }

    fn status_bytes(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    #[ignore = "run in a child process by decoding_a_big_pack_of_blobs_keeps_memory_bounded"]
    fn memory_child() {
        let Some(path) = std::env::var_os("PUSH_MEMORY_PACK") else {
            return;
        };
        let raw = std::fs::read(path).unwrap();
        // Resets the peak resident set to the current one.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = status_bytes("VmRSS:");
        let start = Instant::now();
        let pack = decode(&raw, &limits()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let growth = status_bytes("VmHWM:").saturating_sub(before);
        println!(
            "memory_child: pack_bytes={} objects={} deltas={} growth_bytes={growth} secs={secs:.2} \
             mib_per_sec={:.1}",
            raw.len(),
            pack.objects(),
            pack.deltas(),
            raw.len() as f64 / (1 << 20) as f64 / secs
        );
    }
}

//! Decodes a buffered pack (from `PACK` to its trailing checksum): inflates every object,
//! resolves OFS_DELTA and REF_DELTA entries against objects of the same pack, computes every
//! object's id itself (never trusting the client's word for which commit has which tree) and
//! keeps the commits and trees. Blobs are inflated only to hash and skip them, and deltas whose
//! result is a blob are resolved only when a REF_DELTA names them as its base.
//!
//! It never panics on hostile input, never exceeds its [`DecodeLimits`], and says what it could
//! not resolve (a thin pack's deltas against bases it does not hold), so that the walks in
//! [`crate::walk`] never answer what they cannot prove.
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::{Base, EntryError, EntryHeaderReader, HEADER_LEN, Header, InflateStop, Inflater, PackError, delta};
use crate::object::{Checksum, Commit, ObjectHasher, ObjectKind, TreeEntry, object_id, parse_commit, parse_tree};
use crate::oid::{ObjectFormat, Oid};

/// Delta results and bases kept for the deltas that follow them (blob deltas are resolved only
/// when a REF_DELTA needs one's id; commits and trees are kept anyway).
const DELTA_BASE_CACHE: usize = 16 << 20;
/// `git pack-objects` never writes longer delta chains (its `--depth` is capped at 4095).
pub const MAX_DELTA_DEPTH: u32 = 4095;
/// Compressed bytes inflated between two looks at the deadline.
const DEADLINE_STEP: usize = 1 << 20;

/// Where [`decode`] stops, so a hostile pack cannot make it run without end or fill memory.
/// Besides the pack itself, peak memory is at most about: `max_inflated_bytes` for the raw
/// commits and trees, and three times that once parsed (an entry of a parsed tree takes about 80
/// bytes, against about 40 raw); about 150 bytes per object; a 16 MiB delta base cache; and three
/// times `max_object_bytes` while a delta is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Objects the pack may hold (its header says how many before anything is inflated).
    pub max_objects: usize,
    /// Inflated bytes of the commits and trees kept, over the whole pack.
    pub max_inflated_bytes: u64,
    /// Inflated size of any one object held whole in memory: a commit, a tree, a delta's
    /// instructions, or a delta's base and result when one is resolved. Blobs that are not delta
    /// bases are streamed and may be larger.
    pub max_object_bytes: usize,
    /// Decoding stops with [`PackError::Deadline`] after this instant.
    pub deadline: Instant,
}

impl DecodeLimits {
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

/// The commits and trees a pack holds, by the ids computed from their content.
#[derive(Debug, Default, Clone)]
pub struct PackObjects {
    pub(crate) format: ObjectFormat,
    pub(crate) commits: HashMap<Oid, Commit>,
    pub(crate) trees: HashMap<Oid, Arc<[TreeEntry]>>,
    objects: usize,
    deltas: usize,
    pub(crate) unresolved: usize,
    pub(crate) missing_bases: Vec<Oid>,
}

impl PackObjects {
    pub fn format(&self) -> ObjectFormat {
        self.format
    }

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
    /// delta: their type and id are unknown, so any of them may be a commit or tree an answer
    /// needs.
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
pub fn decode(pack: &[u8], format: ObjectFormat, limits: &DecodeLimits) -> Result<PackObjects, PackError> {
    if pack.is_empty() {
        return Ok(PackObjects {
            format,
            ..PackObjects::default()
        });
    }
    let header = Header::parse(pack)?.ok_or(PackError::EndedInHeader(pack.len()))?;
    let count = header.count;
    if usize::try_from(count).map_or(true, |c| c > limits.max_objects) {
        return Err(PackError::TooManyObjects {
            count,
            max: limits.max_objects as u64,
        });
    }
    // Checked first: a corrupt pack fails here whatever byte was hit, before anything is inflated.
    let body_len = pack
        .len()
        .checked_sub(format.raw_len())
        .filter(|&n| n >= HEADER_LEN)
        .ok_or(PackError::TooShort)?;
    let mut sum = Checksum::new(format);
    for chunk in pack[..body_len].chunks(DEADLINE_STEP) {
        if Instant::now() > limits.deadline {
            return Err(PackError::Deadline { done: 0, count });
        }
        sum.update(chunk);
    }
    if sum.finish().as_bytes() != &pack[body_len..] {
        return Err(PackError::Checksum);
    }
    let mut decoder = Decoder::new(&pack[..body_len], format, limits, count);
    decoder.run()?;
    decoder.finish()
}

/// Kept whole and resolved eagerly: what a policy reads.
fn kept(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Commit | ObjectKind::Tree)
}

/// An entry's base, with an OFS_DELTA's resolved to the index of the entry it names.
#[derive(Debug, Clone, Copy)]
enum EntryBase {
    Whole(ObjectKind),
    Ofs(usize),
    Ref(Oid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A delta whose base's type is not known yet.
    Pending,
    /// A delta whose result is a blob or tag: its id is computed only if a REF_DELTA needs it.
    Typed(ObjectKind),
    Known(ObjectKind, Oid),
}

impl State {
    fn kind(self) -> Option<ObjectKind> {
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
    base: EntryBase,
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
    format: ObjectFormat,
    limits: &'p DecodeLimits,
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
    inflater: Inflater,
}

impl<'p> Decoder<'p> {
    fn new(pack: &'p [u8], format: ObjectFormat, limits: &'p DecodeLimits, count: u32) -> Self {
        Self {
            pack,
            format,
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
            inflater: Inflater::new(),
        }
    }

    fn malformed(&self, index: usize, error: impl Into<EntryError>) -> PackError {
        PackError::Entry {
            index: index as u64,
            count: self.count,
            offset: self.entries.get(index).map_or(0, |e| e.offset) as u64,
            error: error.into(),
        }
    }

    fn deadline(&self, index: usize) -> Result<(), PackError> {
        if Instant::now() > self.limits.deadline {
            return Err(PackError::Deadline {
                done: index as u64,
                count: self.count,
            });
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), PackError> {
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
            return Err(PackError::Trailing {
                extra: (self.pack.len() - pos) as u64,
                count: self.count,
            });
        }
        // Blob deltas get ids only if a REF_DELTA still waits for a base: it may be one of them.
        while !self.wait_id.is_empty() {
            let Some(index) = self.typed.pop_front() else {
                break;
            };
            if let State::Typed(kind) = self.entries[index].state {
                let data = self.materialize(index)?;
                let id = object_id(self.format, kind, &data);
                self.known(index, kind, id);
                self.wake(index)?;
            }
        }
        Ok(())
    }

    /// Reads the header of the entry at `pos`: its base (or type), declared size, and where its
    /// zlib stream starts.
    fn entry_header(&self, index: usize, pos: usize) -> Result<(EntryBase, u64, usize), PackError> {
        let error = |error| PackError::Entry {
            index: index as u64,
            count: self.count,
            offset: pos as u64,
            error,
        };
        let mut input = &self.pack[pos..];
        let header = EntryHeaderReader::new(self.format)
            .feed(&mut input, pos as u64)
            .map_err(error)?
            .ok_or_else(|| error(EntryError::EndedInHeader))?;
        let base = match header.base {
            Base::Whole(kind) => EntryBase::Whole(kind),
            Base::Ref(id) => EntryBase::Ref(id),
            Base::Ofs(back) => {
                let target = pos as u64 - back;
                match self.entries.binary_search_by_key(&target, |e| e.offset as u64) {
                    Ok(base) => EntryBase::Ofs(base),
                    Err(_) => return Err(error(EntryError::BadOffset(back))),
                }
            }
        };
        Ok((base, header.size, self.pack.len() - input.len()))
    }

    /// Inflates the entry just read, resolving it now when it is (or rebuilds) a commit or tree;
    /// returns where the next entry starts.
    fn first_pass(&mut self, index: usize) -> Result<usize, PackError> {
        let base_index = match self.entries[index].base {
            EntryBase::Whole(kind) if kept(kind) => {
                let (data, end) = self.inflate_whole(index)?;
                let id = object_id(self.format, kind, &data);
                self.keep(index, kind, id, data)?;
                return Ok(end);
            }
            EntryBase::Whole(kind) => {
                let mut hasher = ObjectHasher::new(self.format, kind, self.entries[index].size);
                let end = self.inflate(index, &mut |chunk| hasher.update(chunk))?;
                self.known(index, kind, hasher.finish());
                self.wake(index)?;
                return Ok(end);
            }
            EntryBase::Ofs(base) => Some(base),
            EntryBase::Ref(id) => self.by_id.get(&id).copied(),
        };
        let base_kind = base_index.and_then(|b| self.entries[b].state.kind());
        match (base_index, base_kind) {
            (Some(base), Some(kind)) if kept(kind) => {
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
                if let EntryBase::Ref(id) = self.entries[index].base {
                    self.wait_id.entry(id).or_default().push(index);
                }
                Ok(end)
            }
        }
    }

    fn depth(&self, index: usize, base: usize) -> Result<u32, PackError> {
        let depth = self.entries[base].depth + 1;
        if depth > MAX_DELTA_DEPTH {
            return Err(self.malformed(index, EntryError::ChainTooLong));
        }
        Ok(depth)
    }

    /// Applies a delta whose base is a kept commit or tree.
    fn resolve_kept(&mut self, index: usize, base: usize, kind: ObjectKind, delta: &[u8]) -> Result<(), PackError> {
        self.entries[index].depth = self.depth(index, base)?;
        let source = Rc::clone(&self.kept[&base]);
        let data = delta::apply(&source, delta, self.limits.max_object_bytes).map_err(|e| self.malformed(index, e))?;
        let id = object_id(self.format, kind, &data);
        self.keep(index, kind, id, data)
    }

    /// A delta whose result is a blob or tag: its id waits until something needs it.
    fn typed(&mut self, index: usize, base: usize, kind: ObjectKind) -> Result<(), PackError> {
        self.entries[index].depth = self.depth(index, base)?;
        self.entries[index].state = State::Typed(kind);
        self.typed.push_back(index);
        Ok(())
    }

    fn known(&mut self, index: usize, kind: ObjectKind, id: Oid) {
        self.entries[index].state = State::Known(kind, id);
        self.by_id.entry(id).or_insert(index);
    }

    fn keep(&mut self, index: usize, kind: ObjectKind, id: Oid, data: Vec<u8>) -> Result<(), PackError> {
        self.kept_bytes += data.len() as u64;
        if self.kept_bytes > self.limits.max_inflated_bytes {
            return Err(PackError::KeptLimit {
                index: index as u64,
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
    fn wake(&mut self, start: usize) -> Result<(), PackError> {
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
                if kept(kind) {
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
    fn materialize(&mut self, index: usize) -> Result<Rc<Vec<u8>>, PackError> {
        // The deltas from `index` down to the first entry whose content is at hand.
        let mut chain = Vec::new();
        let mut at = index;
        let mut data = loop {
            if let Some(data) = self.kept.get(&at).or(self.cache.map.get(&at)) {
                break Rc::clone(data);
            }
            let base = match self.entries[at].base {
                EntryBase::Whole(_) => {
                    let (data, _) = self.inflate_whole(at)?;
                    let data = Rc::new(data);
                    self.cache.put(at, Rc::clone(&data));
                    break data;
                }
                EntryBase::Ofs(base) => base,
                EntryBase::Ref(id) => match self.by_id.get(&id) {
                    Some(&base) => base,
                    None => return Err(self.malformed(at, EntryError::MissingBase(id))),
                },
            };
            chain.push(at);
            if chain.len() > MAX_DELTA_DEPTH as usize {
                return Err(self.malformed(index, EntryError::ChainTooLong));
            }
            at = base;
        };
        for delta_index in chain.into_iter().rev() {
            let (delta, _) = self.inflate_whole(delta_index)?;
            let next =
                delta::apply(&data, &delta, self.limits.max_object_bytes).map_err(|e| self.malformed(delta_index, e))?;
            data = Rc::new(next);
            self.cache.put(delta_index, Rc::clone(&data));
        }
        Ok(data)
    }

    /// Inflates an entry whole, within `max_object_bytes`.
    fn inflate_whole(&mut self, index: usize) -> Result<(Vec<u8>, usize), PackError> {
        let e = &self.entries[index];
        let size = usize::try_from(e.size)
            .ok()
            .filter(|&s| s <= self.limits.max_object_bytes)
            .ok_or(PackError::ObjectTooLarge {
                index: index as u64,
                count: self.count,
                offset: e.offset as u64,
                size: e.size,
                max: self.limits.max_object_bytes,
            })?;
        let mut data = Vec::with_capacity(size);
        let end = self.inflate(index, &mut |chunk| data.extend_from_slice(chunk))?;
        Ok((data, end))
    }

    /// Inflates an entry's zlib stream, handing the output to `sink`; returns where the stream
    /// ends.
    fn inflate(&mut self, index: usize, sink: &mut dyn FnMut(&[u8])) -> Result<usize, PackError> {
        let (start, size) = (self.entries[index].data, self.entries[index].size);
        self.inflater.start(size);
        let pack = self.pack;
        let mut pos = start;
        loop {
            self.deadline(index)?;
            let rest = &pack[pos..];
            let mut piece = &rest[..rest.len().min(DEADLINE_STEP)];
            let whole = piece.len() == rest.len();
            let before = piece.len();
            let ended = self.inflater.inflate(&mut piece, u64::MAX, sink);
            pos += before - piece.len();
            match ended {
                Ok(true) => return Ok(pos),
                Ok(false) if whole => return Err(self.malformed(index, EntryError::EndedInZlib)),
                Ok(false) => {}
                Err(InflateStop::Entry(e)) => return Err(self.malformed(index, e)),
                Err(InflateStop::Limit) => unreachable!("no limit was set"),
            }
        }
    }

    /// Parses what was kept and counts what could not be resolved.
    fn finish(self) -> Result<PackObjects, PackError> {
        let mut out = PackObjects {
            format: self.format,
            objects: self.entries.len(),
            ..PackObjects::default()
        };
        for e in &self.entries {
            if !matches!(e.base, EntryBase::Whole(_)) {
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
            let bad = |error| PackError::BadObject { kind, id, error };
            match kind {
                ObjectKind::Commit => {
                    let commit = parse_commit(&raw, self.format).map_err(bad)?;
                    out.commits.entry(id).or_insert(commit);
                }
                ObjectKind::Tree => {
                    let tree = parse_tree(&raw, self.format).map_err(bad)?;
                    out.trees.entry(id).or_insert(tree.into());
                }
                ObjectKind::Blob | ObjectKind::Tag => {}
            }
        }
        Ok(out)
    }
}

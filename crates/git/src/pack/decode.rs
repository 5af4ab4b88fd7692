//! Decodes a buffered pack (from `PACK` to its trailing checksum): inflates every object,
//! resolves OFS_DELTA and REF_DELTA entries against objects of the same pack, computes every
//! object's id itself (never trusting the client's word for which commit has which tree) and
//! keeps the commits, trees and annotated tags. Blobs are inflated only to hash and skip them,
//! and deltas whose result is a blob are resolved only when a REF_DELTA names them as its base —
//! unless a [`BlobSink`] asks to see every blob ([`decode_scanning`]: a secret scanner), when each
//! blob's content is handed to it, streamed for whole blobs and rebuilt for deltas.
//!
//! It never panics on hostile input, never exceeds its [`DecodeLimits`], and says what it could
//! not resolve (a thin pack's deltas against bases it does not hold), so that the walks in
//! [`crate::walk`] never answer what they cannot prove.
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::{
    Base, EntryError, EntryHeaderReader, HEADER_LEN, Header, InflateStop, Inflater, PackError, delta,
};
use crate::object::{
    Checksum, Commit, ObjectHasher, ObjectKind, Tag, TreeEntry, object_id, parse_commit, parse_tag,
    parse_tree,
};
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

/// Sees the content of every blob of a pack ([`decode_scanning`]): `start`, its bytes in
/// order, then `end` with the id computed from them. A blob cut short by an error gets no `end`.
/// Then each commit and annotated tag whole (headers and message), once the pack is read.
pub trait BlobSink {
    fn start(&mut self, size: u64);
    fn data(&mut self, chunk: &[u8]);
    fn end(&mut self, id: Oid);
    /// A commit's or tag's raw content: what a message could carry. Nothing by default.
    fn object(&mut self, kind: ObjectKind, id: Oid, raw: &[u8]) {
        let _ = (kind, id, raw);
    }
}

/// The commits, trees and annotated tags a pack holds, by the ids computed from their content.
#[derive(Debug, Default, Clone)]
pub struct PackObjects {
    pub(crate) format: ObjectFormat,
    pub(crate) commits: HashMap<Oid, Commit>,
    pub(crate) trees: HashMap<Oid, Arc<[TreeEntry]>>,
    pub(crate) tags: HashMap<Oid, Tag>,
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

    pub fn tag(&self, id: &Oid) -> Option<&Tag> {
        self.tags.get(id)
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
    decode_inner(pack, format, limits, None)
}

/// [`decode`], handing every blob's content to `blobs` as well: whole blobs as they inflate,
/// deltas that rebuild a blob once the pack is read (within the same limits and deadline), then
/// every commit and annotated tag whole ([`BlobSink::object`]). A blob
/// whose delta cannot be resolved (a thin pack) is counted in [`PackObjects::unresolved`], never
/// handed out, so a scanner that must see everything checks that it is zero.
pub fn decode_scanning(
    pack: &[u8],
    format: ObjectFormat,
    limits: &DecodeLimits,
    blobs: &mut dyn BlobSink,
) -> Result<PackObjects, PackError> {
    decode_inner(pack, format, limits, Some(blobs))
}

fn decode_inner<'s>(
    pack: &[u8],
    format: ObjectFormat,
    limits: &DecodeLimits,
    blobs: Option<&'s mut (dyn BlobSink + 's)>,
) -> Result<PackObjects, PackError> {
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
    decoder.blobs = blobs;
    decoder.run()?;
    decoder.scan_delta_blobs()?;
    decoder.finish()
}

/// Kept whole and resolved eagerly: what a policy reads.
fn kept(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Commit | ObjectKind::Tree | ObjectKind::Tag)
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

struct Decoder<'p, 's> {
    /// Sees every blob, when a scanner asked.
    blobs: Option<&'s mut (dyn BlobSink + 's)>,
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

impl<'p, 's> Decoder<'p, 's> {
    fn new(pack: &'p [u8], format: ObjectFormat, limits: &'p DecodeLimits, count: u32) -> Self {
        Self {
            blobs: None,
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
                let size = self.entries[index].size;
                let mut hasher = ObjectHasher::new(self.format, kind, size);
                let mut blobs = self.blobs.take().filter(|_| kind == ObjectKind::Blob);
                if let Some(b) = blobs.as_mut() {
                    b.start(size);
                }
                let end = self.inflate(index, &mut |chunk| {
                    hasher.update(chunk);
                    if let Some(b) = blobs.as_mut() {
                        b.data(chunk);
                    }
                });
                let id = hasher.finish();
                if let Some(b) = blobs {
                    if end.is_ok() {
                        b.end(id);
                    }
                    self.blobs = Some(b);
                }
                let end = end?;
                self.known(index, kind, id);
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
    fn resolve_kept(
        &mut self,
        index: usize,
        base: usize,
        kind: ObjectKind,
        delta: &[u8],
    ) -> Result<(), PackError> {
        self.entries[index].depth = self.depth(index, base)?;
        let source = Rc::clone(&self.kept[&base]);
        let data = delta::apply(&source, delta, self.limits.max_object_bytes)
            .map_err(|e| self.malformed(index, e))?;
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
            let next = delta::apply(&data, &delta, self.limits.max_object_bytes)
                .map_err(|e| self.malformed(delta_index, e))?;
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

    /// Hands the blobs that deltas rebuild to the sink, if there is one (each is rebuilt from its
    /// chain, within the limits and the deadline).
    fn scan_delta_blobs(&mut self) -> Result<(), PackError> {
        if self.blobs.is_none() {
            return Ok(());
        }
        for index in 0..self.entries.len() {
            let e = &self.entries[index];
            let blob = matches!(
                e.state,
                State::Typed(ObjectKind::Blob) | State::Known(ObjectKind::Blob, _)
            );
            if !blob || matches!(e.base, EntryBase::Whole(_)) {
                continue;
            }
            self.deadline(index)?;
            let data = self.materialize(index)?;
            let id = match self.entries[index].state {
                State::Known(_, id) => id,
                _ => {
                    let id = object_id(self.format, ObjectKind::Blob, &data);
                    self.known(index, ObjectKind::Blob, id);
                    id
                }
            };
            if let Some(b) = self.blobs.as_mut() {
                b.start(data.len() as u64);
                b.data(&data);
                b.end(id);
            }
        }
        Ok(())
    }

    /// Parses what was kept (showing commits and tags to the sink) and counts what could not be
    /// resolved.
    fn finish(mut self) -> Result<PackObjects, PackError> {
        let mut sink = self.blobs.take();
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
            if let Some(sink) = sink.as_mut()
                && matches!(kind, ObjectKind::Commit | ObjectKind::Tag)
            {
                sink.object(kind, id, &raw);
            }
            match kind {
                ObjectKind::Commit => {
                    let commit = parse_commit(&raw, self.format).map_err(bad)?;
                    out.commits.entry(id).or_insert(commit);
                }
                ObjectKind::Tree => {
                    let tree = parse_tree(&raw, self.format).map_err(bad)?;
                    out.trees.entry(id).or_insert(tree.into());
                }
                ObjectKind::Tag => {
                    let tag = parse_tag(&raw, self.format).map_err(bad)?;
                    out.tags.entry(id).or_insert(tag);
                }
                ObjectKind::Blob => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::testgit::git;
    use crate::testutil::repo::{Repo, oid};
    use crate::testutil::{big, xorshift};

    const SHA1: ObjectFormat = ObjectFormat::Sha1;

    pub(crate) fn limits() -> DecodeLimits {
        DecodeLimits {
            max_objects: 100_000,
            max_inflated_bytes: 64 << 20,
            max_object_bytes: 32 << 20,
            deadline: Instant::now() + Duration::from_secs(300),
        }
    }

    /// Recomputes the trailing checksum, so damage reaches the decoder instead of stopping at
    /// the checksum.
    pub(crate) fn reseal(pack: &mut [u8]) {
        if pack.len() >= HEADER_LEN + 20 {
            let body = pack.len() - 20;
            let mut sum = Checksum::new(SHA1);
            sum.update(&pack[..body]);
            pack[body..].copy_from_slice(sum.finish().as_bytes());
        }
    }

    /// Each pushed commit and tree `git rev-list --objects` lists, as git itself reads it.
    pub(crate) fn check_against_git(r: &Repo, pack: &PackObjects, revs: &[&str]) {
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
            let pack = decode(&raw, SHA1, &limits()).unwrap();
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
    fn sha256_packs_decode_to_what_git_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        git(
            tmp.path(),
            &["init", "-q", "--object-format=sha256", work.to_str().unwrap()],
        );
        for version in 0..3 {
            std::fs::write(work.join("big.txt"), big(300 + version, &format!("v{version}"))).unwrap();
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-q", "-m", "v"]);
        }
        let head = git(&work, &["rev-parse", "HEAD"]);
        let raw = crate::testgit::git_in(
            &work,
            &["pack-objects", "--stdout", "-q", "--revs"],
            b"HEAD\n",
            &[],
        );
        let pack = decode(&raw, ObjectFormat::Sha256, &limits()).unwrap();
        let commit = pack
            .commit(&oid(&head))
            .expect("the head commit, by its SHA-256 id");
        assert_eq!(commit.tree.to_string(), git(&work, &["rev-parse", "HEAD^{tree}"]));
        assert_eq!(commit.parents, vec![oid(&git(&work, &["rev-parse", "HEAD~1"]))]);
        assert!(pack.deltas() > 0);
        // Read as SHA-1 it is not a pack at all: its checksum is 32 bytes.
        assert_eq!(decode(&raw, SHA1, &limits()).unwrap_err(), PackError::Checksum);
    }

    #[test]
    fn empty_input_and_empty_pack_hold_nothing() {
        let r = Repo::new();
        let pack = decode(&[], SHA1, &limits()).unwrap();
        assert_eq!((pack.objects(), pack.unresolved()), (0, 0));
        let empty = r.pack("", &[]);
        assert_eq!(decode(&empty, SHA1, &limits()).unwrap().objects(), 0);
    }

    #[test]
    fn limits_are_errors_naming_the_limit() {
        let (r, commits) = history();
        let raw = r.pack(&format!("{}\n", commits[4]), &["--delta-base-offset"]);
        let count = decode(&raw, SHA1, &limits()).unwrap().objects();

        let few = DecodeLimits {
            max_objects: count - 1,
            ..limits()
        };
        let error = decode(&raw, SHA1, &few).unwrap_err();
        assert!(error.is_limit());
        let error = error.to_string();
        assert!(
            error.contains(&format!("holds {count} objects, more than the limit max_objects")),
            "{error}"
        );
        let exact = DecodeLimits {
            max_objects: count,
            ..limits()
        };
        assert!(decode(&raw, SHA1, &exact).is_ok());

        // The tree of `many/` is over 4 KiB.
        let small = DecodeLimits {
            max_object_bytes: 4096,
            ..limits()
        };
        let error = decode(&raw, SHA1, &small).unwrap_err();
        assert!(
            matches!(error, PackError::ObjectTooLarge { max: 4096, .. }),
            "{error}"
        );

        let little = DecodeLimits {
            max_inflated_bytes: 10_000,
            ..limits()
        };
        let error = decode(&raw, SHA1, &little).unwrap_err().to_string();
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
        let enough = DecodeLimits {
            max_inflated_bytes: kept,
            ..limits()
        };
        assert!(decode(&raw, SHA1, &enough).is_ok());

        let late = DecodeLimits {
            deadline: Instant::now() - Duration::from_millis(1),
            ..limits()
        };
        let error = decode(&raw, SHA1, &late).unwrap_err().to_string();
        assert!(error.contains("longer than its deadline (0 of its"), "{error}");
    }

    #[test]
    fn corrupt_packs_are_clean_errors() {
        let (r, commits) = history();
        let raw = r.pack(&format!("{}\n", commits[1]), &["--delta-base-offset"]);
        let error = |pack: &[u8]| decode(pack, SHA1, &limits()).unwrap_err().to_string();

        let mut magic = raw.clone();
        magic[0] = b'K';
        assert!(error(&magic).contains("found \"KACK\""));
        let mut version = raw.clone();
        version[7] = 7;
        assert!(error(&version).contains("unsupported pack version 7"));
        assert!(error(&raw[..raw.len() / 2]).contains("checksum does not match"));
        assert!(error(&raw[..15]).contains("too short to hold its trailing checksum"));
        assert!(error(&raw[..8]).contains("ended inside its 12-byte header, after 8 bytes"));
        assert!(error(&[raw.clone(), b"x".to_vec()].concat()).contains("checksum does not match"));

        // Any flipped byte is caught by the checksum.
        for at in (0..raw.len()).step_by(7) {
            let mut bad = raw.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad, SHA1, &limits()).is_err(), "flipped byte {at}");
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
                bytes.extend_from_slice(&[0; 20]);
                reseal(&mut bytes);
            }
            let _ = decode(&bytes, SHA1, &limits());
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
            let _ = decode(&pack, SHA1, &limits());
        }

        #[test]
        fn arbitrary_deltas_never_panic(
            base in proptest::collection::vec(any::<u8>(), 0..64),
            delta in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(out) = delta::apply(&base, &delta, 1 << 16) {
                prop_assert!(out.len() <= 1 << 16);
            }
        }
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
                "pack::decode::tests::memory_child",
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
        r.git_in(&["index-pack", "--stdin"], &raw);
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
        let pack = decode(&raw, SHA1, &limits()).unwrap();
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

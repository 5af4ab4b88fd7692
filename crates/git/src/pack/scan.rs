//! A streaming scan of a pack: each object's header and inflated bytes as they pass, so a secret
//! scanner sees what a `git push` uploads, including the literal text that delta instructions
//! insert.
//!
//! Packs arrive as chunks split anywhere. The scanner never buffers the pack or an object: it
//! holds a 12-byte header, an entry header, the trailing checksum and one fixed output buffer,
//! whatever the pack's size. It does not resolve deltas (that needs the bases); it checks the
//! trailing checksum as git does. Malformed input stops it with an error naming the object, and
//! later bytes are ignored.
use std::fmt;

use super::{Base, EntryError, EntryHeaderReader, HEADER_LEN, Header, InflateStop, Inflater, PackError};
use crate::object::Checksum;
use crate::oid::{ObjectFormat, Oid};

/// Where scanning stops, so a hostile pack cannot make the scanner run without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Objects scanned before stopping.
    pub max_objects: u64,
    /// Inflated bytes (over all objects) handed out before stopping.
    pub max_inflated_bytes: u64,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_objects: 1_000_000,
            max_inflated_bytes: 1 << 30,
        }
    }
}

/// What the scanner saw, in pack order: `Object`, its `Data` events, `ObjectEnd`, next object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackEvent<'a> {
    /// An object starts. `index` counts from 0 in pack order; `size` is the inflated size its
    /// header declares (for deltas, the size of the delta instructions, not of the object they
    /// rebuild).
    Object { index: u64, base: Base, size: u64 },
    /// The next inflated bytes of the current object: its content, or for a delta its raw
    /// instructions, whose insert commands carry the new text literally.
    Data(&'a [u8]),
    /// The current object's zlib stream ended, having inflated to exactly its declared size. Not
    /// sent for an object cut short by an error or a limit.
    ObjectEnd,
}

/// What a whole pack held, once it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// Objects scanned to their end (`ObjectEnd` sent).
    pub objects: u64,
    /// Inflated bytes handed out in `Data` events.
    pub inflated_bytes: u64,
    /// Why scanning stopped early: malformed input, or a limit ([`PackError::is_limit`]).
    pub error: Option<PackError>,
}

impl PackSummary {
    /// Scanning stopped at a limit; the rest of the pack was not scanned.
    pub fn truncated(&self) -> bool {
        self.error.as_ref().is_some_and(PackError::is_limit)
    }
}

enum State {
    Header { buf: [u8; HEADER_LEN], len: usize },
    Entry(EntryHeaderReader),
    Inflate,
    Trailer { buf: [u8; 32], have: usize },
    Done,
    Stopped,
}

/// Scans one pack, fed in chunks.
pub struct PackScanner {
    format: ObjectFormat,
    limits: ScanLimits,
    state: State,
    inflater: Inflater,
    checksum: Option<Checksum>,
    /// Pack bytes consumed so far.
    pos: u64,
    /// Whether any byte arrived: a push with no pack at all (deletes only) is fine.
    seen: bool,
    /// Objects the pack header announced.
    count: u32,
    /// The current object: its index and where it starts.
    index: u64,
    start: u64,
    summary: PackSummary,
}

impl fmt::Debug for PackScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackScanner")
            .field("pos", &self.pos)
            .field("count", &self.count)
            .field("index", &self.index)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl PackScanner {
    pub fn new(format: ObjectFormat, limits: ScanLimits) -> Self {
        Self {
            format,
            limits,
            state: State::Header {
                buf: [0; HEADER_LEN],
                len: 0,
            },
            inflater: Inflater::new(),
            checksum: Some(Checksum::new(format)),
            pos: 0,
            seen: false,
            count: 0,
            index: 0,
            start: 0,
            summary: PackSummary::default(),
        }
    }

    /// Feeds the next bytes of the pack, split anywhere, calling `on` for each event in order.
    pub fn feed(&mut self, mut chunk: &[u8], on: &mut dyn FnMut(PackEvent<'_>)) {
        if chunk.is_empty() || matches!(self.state, State::Stopped) {
            return;
        }
        self.seen = true;
        while !chunk.is_empty() && !matches!(self.state, State::Stopped) {
            let before = chunk;
            let step = self.step(&mut chunk, on);
            let used = &before[..before.len() - chunk.len()];
            self.pos += used.len() as u64;
            if !matches!(self.state, State::Trailer { .. } | State::Done)
                && let Some(c) = self.checksum.as_mut()
            {
                c.update(used);
            }
            if let Err(e) = step {
                self.summary.error.get_or_insert(e);
                self.state = State::Stopped;
            }
        }
    }

    /// The pack ended (end of the body). Returns what it held.
    pub fn finish(mut self) -> PackSummary {
        if self.summary.error.is_none() && self.seen {
            self.summary.error = match self.state {
                State::Header { len, .. } => Some(PackError::EndedInHeader(len)),
                State::Entry(_) => Some(self.entry_error(EntryError::EndedInHeader)),
                State::Inflate => Some(self.entry_error(EntryError::EndedInZlib)),
                State::Trailer { .. } => Some(PackError::EndedInChecksum),
                State::Done | State::Stopped => None,
            };
        }
        self.summary
    }

    fn entry_error(&self, error: EntryError) -> PackError {
        PackError::Entry {
            index: self.index,
            count: self.count,
            offset: self.start,
            error,
        }
    }

    /// Consumes some of `chunk` (the caller counts and hashes what was consumed).
    fn step(&mut self, chunk: &mut &[u8], on: &mut dyn FnMut(PackEvent<'_>)) -> Result<(), PackError> {
        let len_before = chunk.len();
        match &mut self.state {
            State::Header { buf, len } => {
                let take = (HEADER_LEN - *len).min(chunk.len());
                buf[*len..*len + take].copy_from_slice(&chunk[..take]);
                *len += take;
                *chunk = &chunk[take..];
                if let Some(header) = Header::parse(&buf[..*len])? {
                    self.count = header.count;
                    self.next_object_at(self.pos + take as u64)?;
                }
                Ok(())
            }
            State::Entry(reader) => {
                let Some(header) = reader.feed(chunk, self.start).map_err(|e| self.entry_error(e))? else {
                    return Ok(());
                };
                on(PackEvent::Object {
                    index: self.index,
                    base: header.base,
                    size: header.size,
                });
                self.inflater.start(header.size);
                self.state = State::Inflate;
                Ok(())
            }
            State::Inflate => {
                let left = self.limits.max_inflated_bytes - self.summary.inflated_bytes;
                let before = self.inflater.produced();
                let ended = self.inflater.inflate(chunk, left, &mut |data| on(PackEvent::Data(data)));
                self.summary.inflated_bytes += self.inflater.produced() - before;
                match ended {
                    Ok(false) => Ok(()),
                    Ok(true) => {
                        on(PackEvent::ObjectEnd);
                        self.summary.objects += 1;
                        self.index += 1;
                        // The zlib stream ends exactly where the next entry starts.
                        self.next_object_at(self.pos + (len_before - chunk.len()) as u64)
                    }
                    Err(InflateStop::Entry(e)) => Err(self.entry_error(e)),
                    Err(InflateStop::Limit) => Err(PackError::InflateLimit {
                        index: self.index,
                        count: self.count,
                        offset: self.start,
                        max: self.limits.max_inflated_bytes,
                    }),
                }
            }
            State::Trailer { buf, have } => {
                let want = self.format.raw_len();
                let take = (want - *have).min(chunk.len());
                buf[*have..*have + take].copy_from_slice(&chunk[..take]);
                *have += take;
                *chunk = &chunk[take..];
                if *have == want {
                    let sum = self.checksum.take().map(Checksum::finish);
                    if sum.as_ref().map(Oid::as_bytes) != Some(&buf[..want]) {
                        return Err(PackError::Checksum);
                    }
                    self.state = State::Done;
                }
                Ok(())
            }
            State::Done => Err(PackError::AfterChecksum(self.pos)),
            State::Stopped => {
                *chunk = &[];
                Ok(())
            }
        }
    }

    /// After the header or an object, where the next one starts (`at`): its header, or the
    /// trailer.
    fn next_object_at(&mut self, at: u64) -> Result<(), PackError> {
        if self.index == u64::from(self.count) {
            self.state = State::Trailer { buf: [0; 32], have: 0 };
            return Ok(());
        }
        if self.index >= self.limits.max_objects {
            return Err(PackError::ObjectLimit {
                index: self.index,
                count: self.count,
                max: self.limits.max_objects,
            });
        }
        self.start = at;
        self.state = State::Entry(EntryHeaderReader::new(self.format));
        Ok(())
    }
}

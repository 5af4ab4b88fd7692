//! Anchors: the chain head of a store, signed, to be kept somewhere the recorded host cannot
//! rewrite (the record sink writes one per seal and at least every minute), and what a reader
//! of a store's files needs to ship them without taking the writer's lock.
//!
//! An anchor signs `DOMAIN | 6 | u64 segment | u64 seq | [u8; 32] hash | u8 sealed | u64 at |
//! u32 runner_len | runner`, integers little-endian: `seq` and `hash` are those of the last frame
//! of segment `segment` when the anchor was taken (its seal when `sealed`). A store whose chain
//! does not pass through every anchored (seq, hash) ends early or was rewritten, whatever key
//! signed it afterwards.
//!
//! Must never need the store's lock, nor change a file.
use std::io;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::frame::{Hash, ScanOptions, scan_segment};
use super::keys::DOMAIN;
use super::{list_segments, segment_path};
use crate::model::Micros;

/// The "kind" byte of an anchor's signed message (frames use 1..=4, tombstones 5).
const KIND_ANCHOR: u8 = 6;

/// One signed chain head, as stored beside a runner's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The runner (the sink's prefix) whose chain this is.
    pub runner: String,
    pub segment: u64,
    pub seq: u64,
    /// SHA-256 of the frame at `seq`, hex.
    pub hash: String,
    /// The frame is the segment's seal.
    pub sealed: bool,
    pub at: Micros,
    /// Ed25519 over the message in the module doc, hex.
    pub signature: String,
}

fn anchor_message(runner: &str, segment: u64, seq: u64, hash: &Hash, sealed: bool, at: Micros) -> Vec<u8> {
    let mut m = Vec::with_capacity(17 + 1 + 8 * 3 + 32 + 1 + 4 + runner.len());
    m.extend_from_slice(DOMAIN);
    m.push(KIND_ANCHOR);
    m.extend_from_slice(&segment.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(hash);
    m.push(u8::from(sealed));
    m.extend_from_slice(&at.to_le_bytes());
    m.extend_from_slice(&(runner.len() as u32).to_le_bytes());
    m.extend_from_slice(runner.as_bytes());
    m
}

impl Anchor {
    pub fn sign(key: &SigningKey, runner: &str, head: &SegmentState, at: Micros) -> Option<Anchor> {
        let (seq, hash) = head.head?;
        let msg = anchor_message(runner, head.number, seq, &hash, head.sealed, at);
        Some(Anchor {
            runner: runner.to_owned(),
            segment: head.number,
            seq,
            hash: hex::encode(hash),
            sealed: head.sealed,
            at,
            signature: hex::encode(key.sign(&msg).to_bytes()),
        })
    }

    /// The anchored hash, when the anchor's signature verifies under `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Option<Hash> {
        let hash: Hash = hex::decode(&self.hash).ok()?.try_into().ok()?;
        let sig: [u8; 64] = hex::decode(&self.signature).ok()?.try_into().ok()?;
        let msg = anchor_message(&self.runner, self.segment, self.seq, &hash, self.sealed, self.at);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .is_ok()
            .then_some(hash)
    }
}

/// What a segment file holds right now, read without the writer's lock: how many bytes are
/// whole frames, whether it is sealed, and its last good frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentState {
    pub number: u64,
    /// Bytes of whole frames that passed their checks (what is safe to ship).
    pub good_len: u64,
    pub sealed: bool,
    /// Seq and hash of the last good frame.
    pub head: Option<(u64, Hash)>,
}

/// Reads segment `number` of the store in `dir`, checking framing and the chain within it
/// (signatures are the verifier's business).
pub fn segment_state(dir: &Path, number: u64) -> io::Result<SegmentState> {
    let scan = scan_segment(
        &segment_path(dir, number),
        number,
        &ScanOptions::default(),
        &mut |_| {},
    )?;
    Ok(SegmentState {
        number,
        good_len: scan.good_len,
        sealed: scan.sealed && scan.problem.is_none(),
        head: scan.head.map(|(seq, hash, _)| (seq, hash)),
    })
}

/// The segment numbers present in the store in `dir`, ascending.
pub fn segment_numbers(dir: &Path) -> io::Result<Vec<u64>> {
    list_segments(dir)
}

/// The hash of the frame numbered `seq` in segment `number` of the store in `dir`, if the
/// segment holds it as a whole frame (its checksum and chain are the verifier's business).
pub fn frame_hash(dir: &Path, number: u64, seq: u64) -> io::Result<Option<Hash>> {
    use super::frame::{FrameReader, MAGIC, Next};
    let file = std::fs::File::open(segment_path(dir, number))?;
    let mut reader = FrameReader::new(file, 0);
    let mut magic = [0u8; 8];
    if super::frame::read_full(reader.get_mut(), &mut magic)? != MAGIC.len() {
        return Ok(None);
    }
    reader.offset = MAGIC.len() as u64;
    while let Next::Frame { .. } = reader.next_frame()? {
        if reader.seq() == seq {
            return Ok(Some(reader.hash()));
        }
        if reader.seq() > seq {
            break;
        }
    }
    Ok(None)
}

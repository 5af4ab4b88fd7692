//! ghgate's session records, knowing nothing of the daemon that writes them: what a record is,
//! how records are kept so that any later alteration shows, and how they are read back for
//! auditors.
//!
//! - [`model`]: one typed record per fact (sessions, connections, exchanges, body chunks, stream
//!   events, git operations, masking, identity, policy decisions, approvals, passthrough relays,
//!   refusals, enforcement gaps, and the store's own recovery and tombstone records), their JSON,
//!   and the masking of headers and command lines before anything becomes a record;
//! - [`store`]: the append-only, hash-chained, Ed25519-signed segment store (frames, keys,
//!   reading, verification, retention under signed tombstones);
//! - [`index`]: the SQLite index derived from the store, for listing sessions and finding one
//!   session's records;
//! - [`session`]: one session rebuilt from its records, its timeline and its text rendering;
//! - [`export`]: HAR 1.2, JSON lines and a self-contained HTML page;
//! - [`git`]: what the recorder keeps of git smart-HTTP bodies (read with `ghgate-git`);
//! - [`trace`]: where one secret fingerprint appears across the store, and every fingerprint in
//!   sum.
//!
//! The recorder at runtime (its writer and indexer threads, admission and backpressure, the
//! processes it watches) is the daemon's. This crate must never store a credential in clear, and
//! never change how a record already written reads: stores written by earlier versions verify,
//! list, show and export, and their records write back to the bytes they were stored as.
#![forbid(unsafe_code)]

pub mod export;
pub mod git;
mod id;
pub mod index;
pub mod model;
pub mod session;
pub mod store;
pub mod trace;
mod words;

pub use id::{ExchangeId, SessionId};

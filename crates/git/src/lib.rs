//! git's wire formats, once, for every part of ghgate that reads or writes them: the recorder,
//! the policy stage and the push gate use these parsers and nothing else, so that no two of them
//! can read one push two ways.
//!
//! - [`oid`]: one object id type (SHA-1 and SHA-256), one notion of the zero id;
//! - [`pktline`]: the pkt-line reader (incremental, bounded) and writers, side-band bands;
//! - [`caps`]: capability lists, and the rewrite the gateway makes of a push advertisement's;
//! - [`refs`]: a ref update and what it does ([`RefOp`]), decided in one place, and how a pushed
//!   ref moves once its ancestry is known ([`RefKind`]);
//! - [`receive`]: a push request's command list (shallow lines, commands, push certificates,
//!   push options), and writing it again with fewer commands;
//! - [`upload`]: a fetch request's wants and haves (protocol v0 and v2);
//! - [`advert`]: ref advertisements (`# service=` header, v0/v1 refs, v2 capabilities, `ls-refs`
//!   answers) and the rewrite of a receive-pack advertisement as it streams;
//! - [`report`]: report-status, v1 and v2, plain or inside side-band: read, written, merged;
//! - [`object`]: object types and ids, commit, tree and tag parsers;
//! - [`pack`]: pack headers, entry headers, bounded inflation, deltas; a streaming scan and a
//!   whole decode;
//! - [`walk`]: fast-forward and changed-path answers over an [`walk::ObjectSource`].
//!
//! It knows nothing of the daemon: no I/O, no async runtime, no clock but the deadlines callers
//! pass. Parsers never panic on hostile bytes, hold bounded memory, and read what git reads;
//! where git's own readers are the reference, the module says which.
#![forbid(unsafe_code)]

pub mod advert;
pub mod bounded;
pub mod caps;
pub mod object;
pub mod oid;
pub mod pack;
pub mod pktline;
pub mod receive;
pub mod refs;
pub mod report;
pub mod upload;
pub mod walk;

#[cfg(test)]
mod real_git_tests;
#[cfg(any(test, feature = "test-support"))]
pub mod testgit;
#[cfg(test)]
mod testutil;

pub use oid::{ObjectFormat, Oid};
pub use refs::{RefKind, RefOp, RefUpdate};

//! Session recording in the daemon: the recorder at runtime ([`recorder`]: the writer and indexer
//! threads, write-through, admission and backpressure, watching sessions' processes end), on top
//! of the `ghgate-record` crate (the model, the store, the index, session views and exports, and
//! what is kept of git bodies), whose modules are re-exported here.
//!
//! This module must never store a credential in clear, and never let an exchange pass unrecorded
//! unless the configuration explicitly allows it.
pub use ghgate_record::{export, git, index, model, session, store, trace};

pub mod recorder;
pub mod sink;

pub use recorder::Recorder;

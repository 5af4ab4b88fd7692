//! Session recording: every intercepted exchange, stream event and git operation becomes a record
//! in a tamper-evident, crash-safe store, from which sessions are listed, shown, replayed, verified
//! and exported.
//!
//! This module must never store a credential in clear, and never let an exchange pass unrecorded
//! unless the configuration explicitly allows it.
pub mod export;
pub mod git;
pub mod index;
pub mod model;
pub mod recorder;
pub mod session;
pub mod store;

pub use recorder::Recorder;

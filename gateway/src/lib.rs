//! ghgate: a host-local gateway for the GitHub traffic of AI coding agents and CI jobs.
//!
//! One connection travels through these stages, in order: `redirect` (kernel programs send it
//! here) → `listen` (accept, recover the original destination and the caller) → `identity`
//! (who is calling) → `relay` (forward it to where it was going). A terminated connection's
//! requests go through the `http` phase engine, which classifies each request once with
//! `ghgate_policy::classify` (host checked against the SNI, canonical path, repository, git
//! service, Copilot endpoint) before `credentials`, `enforce`, `mask` and `record` read it.
//! `policy` reads the policy file and keeps it current (its model is `ghgate-policy`'s).
//! `config` is validated once at load; `resolve` keeps the intercept set's names current; `cli`
//! is the command line. `telemetry` counts for Prometheus and streams events to syslog or a
//! webhook.
pub mod approval;
pub mod assemble;
pub mod bucket;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod enforce;
pub mod http;
pub mod identity;
pub mod install;
pub mod keyfile;
pub mod listen;
pub mod mask;
pub mod notify;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod redirect;
pub mod relay;
pub mod resolve;
pub mod runner;
pub mod selftest;
pub mod sys;
pub mod telemetry;
pub mod tls;

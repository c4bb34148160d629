//! hookd: a REST Hooks engine in one binary.
//!
//! Map: `config` turns flags into a [`config::Config`]; `server` spawns and joins every
//! thread. `api` (tiny_http) turns requests into calls on `store`; `dispatch` (ureq)
//! claims due deliveries from `store` and records their outcomes through it. `store` is
//! the only module that touches SQLite: one writer thread with group commit, plus
//! read-only connections. The pure modules (`patterns`, `payload`, `sign`, `retry`, `ids`, `clock`)
//! hold the rules and are unit-tested with known vectors.

pub mod api;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod ids;
pub mod metrics;
pub mod model;
pub mod patterns;
pub mod payload;
pub mod retry;
pub mod secrets;
pub mod server;
pub mod sign;
pub mod store;
pub mod target;

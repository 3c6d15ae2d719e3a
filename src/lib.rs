//! A durable AccelByte Extend challenge event handler.
//!
//! AGS events arrive as gRPC `OnMessage` calls and become rows of
//! `user_goal_progress` in PostgreSQL. An update is acknowledged only once it
//! is fsync'd in a local write-ahead log, and reaches the database exactly once
//! across kill -9, restarts, database outages and redelivery. The data path,
//! top to bottom:
//!
//! - [`grpc`] — the four AGS `OnMessage` services ([`grpc::codec`] decodes),
//!   health and reflection; [`http`] — `/healthz`, `/metrics` and the same
//!   events as HTTP JSON ([`http::ingest`]) behind [`http::access`] (tokens
//!   or closed, a rate limit per client).
//! - [`ingest`] — the one path both take: namespace filter, validation,
//!   rules, WAL append; answered once durable.
//! - [`event`] — validates the wire messages into an [`event::Event`].
//! - [`rules`] — the goal index and the progress rules: `Event → [Record]`, pure.
//! - [`wal`] — sled write-ahead log: dedup by event id, group commit with one
//!   fsync per batch, replay at start-up; hands committed records to a sink.
//! - [`buffer`] — coalesces acknowledged records per user-goal, in WAL order;
//!   past `MEMORY_MAX_KEYS` it spills and the WAL hands the rest back later.
//! - [`flusher`] — every `FLUSH_INTERVAL`: deletions + read, plan, write +
//!   watermark in one transaction, then WAL truncation.
//! - [`store`] — the progress store seam: PostgreSQL ([`store::postgres`]) and
//!   the embedded SQLite default ([`store::sqlite`]).
//!
//! Around it: [`config`] (settings and `challenges.json`), [`app`] (assembly,
//! start-up, serving and shutdown), [`retry`] (backoff), [`health`] (the
//! service's phase and last flush), [`metrics`], [`telemetry`] (logs),
//! [`clock`], [`model`] (the rules as a rule book, for tests and fuzzing), the
//! operator commands in [`cli`] (`send`, `progress`, `wal inspect`, `wal
//! drain`, `health`, the benchmarks), and [`proto`] (generated wire types). docs/DESIGN.md explains
//! the whole.

pub mod app;
pub mod buffer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod event;
pub mod failpoints;
pub mod flusher;
pub mod grpc;
pub mod health;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod retry;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod wal;

pub use app::App;

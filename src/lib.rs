//! A durable AccelByte Extend challenge event handler.
//!
//! AGS events arrive as gRPC `OnMessage` calls and become rows of
//! `user_goal_progress` in PostgreSQL. An update is acknowledged only once it
//! is fsync'd in a local write-ahead log, and reaches the database exactly once
//! across kill -9, restarts, database outages and redelivery. The data path,
//! top to bottom:
//!
//! - [`grpc`] — the three AGS `OnMessage` services, health and reflection;
//!   maps every error to a gRPC status once.
//! - [`event`] — decodes and validates the wire messages into an [`event::Event`].
//! - [`rules`] — the goal index and the progress rules: `Event → [Update]`, pure.
//! - [`wal`] — sled write-ahead log: dedup by event id, group commit with one
//!   fsync per batch, replay at start-up ([`wal::codec`] record format,
//!   [`wal::dedup`] marks).
//! - [`buffer`] — coalesces acknowledged updates per user-goal, in WAL order.
//! - [`flusher`] — every `FLUSH_INTERVAL`: batch UPSERT + watermark in one
//!   transaction, then WAL truncation.
//! - [`store`] — the progress store seam and PostgreSQL ([`store::postgres`]).
//!
//! Around it: [`config`] (settings and `challenges.json`), [`app`] (assembly,
//! start-up and shutdown), [`health`] (`/healthz`, `/metrics`), [`metrics`],
//! [`telemetry`] (logs), [`send`] (the test-event client), [`bench`] (a load
//! generator) and [`proto`]
//! (generated wire types).

pub mod app;
pub mod bench;
pub mod buffer;
pub mod codec;
pub mod config;
pub mod event;
pub mod failpoints;
pub mod flusher;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod rules;
pub mod send;
pub mod store;
pub mod telemetry;
pub mod wal;

pub use app::App;

//! The operator's commands around the service: `send` (one test event),
//! `progress`, `wal inspect`, `wal drain` and `health` ([`inspect`]), and the
//! benchmarks ([`bench`]: load, roof, plot, store, dedup, WAL). They use the
//! service's modules; the service's modules never use these.

pub mod bench;
pub mod inspect;
pub mod send;

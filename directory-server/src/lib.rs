//! Quaver's directory server: it knows which files exist and which peers are online with which
//! file, and answers searches and "who has this file?" over gRPC.
//!
//! Layers, outside in: `server` (transport, timers, shutdown) → `service` (thin gRPC handlers;
//! `reach` dials an announcing peer back over QUIC; `rendezvous` tells peers their mapped UDP address) → `directory` (domain logic, locking) → `catalog` (sled), `index` (tantivy), `presence`
//! (leases), `online` (counts), `ranking` (source order). The inner modules never know about
//! gRPC or tokio; `presence`, `online` and `ranking` are pure and tested without I/O.
//! `ops` is what runs around them for operators: TLS, the accept path's connection limits,
//! request limits, metrics and logs.

pub mod admin;
pub mod admin_calls;
pub mod backup;
pub mod bans;
pub mod catalog;
pub mod config;
pub mod directory;
pub mod error;
pub mod grouping;
pub mod hints;
pub mod index;
pub mod keep_alive;
pub mod online;
pub mod ops;
pub mod presence;
pub mod proof;
pub mod ranking;
pub mod reach;
pub mod relay;
pub mod rendezvous;
pub mod server;
pub mod service;
pub mod validate;

pub use config::Config;
pub use directory::Directory;
pub use server::{RunningServer, ServerError};

//! walship: a log-shipping replication sidecar for PostgreSQL.
//!
//! Modules follow the data's path: [`source`] tails the leader's WAL into the durable [`log`];
//! [`admin`] serves the HTTP API; [`node`] keeps the node's role and term.

pub mod admin;
pub mod apply;
pub mod backoff;
pub mod config;
pub mod demo;
pub mod divergence;
pub mod error;
pub mod fence;
pub mod follower;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod localcluster;
pub mod localpg;
pub mod log;
pub mod lsn;
pub mod node;
pub mod pgoutput;
pub mod relay;
pub mod reseed;
pub mod seed;
pub mod sequences;
pub mod sidecar;
pub mod source;
pub mod sql;

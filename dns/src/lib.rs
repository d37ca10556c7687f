//! Meridian's authoritative DNS server for global services.
//!
//! Clients in a member cluster resolve `<svc>.<ns>.global` to this cluster's VIP of the
//! service. The zones are built from the controller's snapshot stream
//! ([`meridian_api::subscription`]) and served by hickory-server:
//!
//! - [`config`]: the flags;
//! - [`zone`]: records of the served zones, built from a snapshot;
//! - [`clusterset`]: the Multi-Cluster Services names (`<svc>.<ns>.svc.clusterset.local`);
//! - [`authority`]: the request handler answering from the current zones, swapped atomically;
//! - [`snapshot`]: applies each new snapshot to the authority;
//! - [`server`]: the UDP and TCP sockets;
//! - [`metrics`] and [`admin`]: Prometheus metrics and health endpoints.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod authority;
pub mod clusterset;
pub mod config;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod zone;

//! Meridian controller.
//!
//! Connects to every member cluster registered through a kubeconfig Secret (and always to its
//! own cluster), aggregates exported Services, their endpoints and the locality of each
//! endpoint into a [`catalog`], allocates VIPs and gateway listener ports in its own cluster
//! ([`vip`]), writes status ([`status`]) and streams deterministic snapshots to its own
//! cluster's gateway and DNS server ([`server`]).
#![forbid(unsafe_code)]

pub mod crd;
pub mod error;

pub use error::{Error, Result};
pub mod catalog;

#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod server;
pub mod snapshot;

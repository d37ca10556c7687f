//! Meridian controller.
//!
//! Connects to every member cluster registered through a kubeconfig Secret (and always to its
//! own cluster: [`members`]), aggregates exported Services, their endpoints and the locality
//! of each endpoint into a catalog, allocates VIPs and gateway listener ports in its own
//! cluster, writes status and streams deterministic snapshots to its own cluster's gateway
//! and DNS server over its gRPC port ([`grpc`]: TLS with a certificate from the mesh CA,
//! callers authenticated by TokenReview). The aggregator is the loop that ties them
//! together; [`run`] starts everything. With more than one replica, a leader elected through
//! a Lease does all the writing.
#![forbid(unsafe_code)]

mod aggregator;
pub mod catalog;
mod coalesce;
mod config;
pub mod crd;
pub mod dirty;
mod drain;
mod error;
pub mod grpc;
pub mod incremental;
mod leader;
pub mod mcs;
pub mod members;
mod metrics;
mod own_cluster;
pub mod policy;
mod run;
pub mod snapshot;
mod status;
mod targets;
mod tasks;
pub mod vip;

#[cfg(test)]
mod fixtures;

pub use config::{AuthMode, Config};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use run::run;

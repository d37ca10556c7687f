//! Meridian's shared model.
//!
//! One data model flows from the controller to the gateway, the DNS server and the CLI:
//! the protobuf [`proto`] types carry snapshots over the wire, [`locality`] and [`policy`]
//! describe where endpoints are and how traffic should be distributed, and [`split`] and
//! [`pick`] are the single implementation of Envoy's locality-weighted load balancing that
//! every component calls. The gateway and the DNS server follow the controller's snapshots
//! through [`subscription`] (full snapshots, or [`resources`] deltas), over the one controller connection in [`channel`] (TLS with a
//! pinned root, or plaintext for development); tests fake the controller with `testing::FakeDiscovery`
//! (cargo feature `testing`). The binaries share one skeleton (cargo feature `runtime`):
//! [`signal`] for the shutdown token and [`telemetry`] for logging.
#![forbid(unsafe_code)]

pub mod proto {
    //! Generated protobuf and gRPC types of `meridian.v1`.
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("meridian.v1");
}

#[cfg(feature = "runtime")]
pub mod accept;
pub mod admin;
pub mod channel;
pub mod locality;
pub mod pick;
pub mod policy;
pub mod resources;
#[cfg(feature = "runtime")]
pub mod signal;
pub mod split;
pub mod subscription;
#[cfg(feature = "runtime")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use locality::{Locality, LocalityPattern};
pub use policy::TrafficPolicy;

/// Formats an error with its sources, `outer: inner: root`, for one log field: tonic's
/// transport errors and the binaries' own error types keep the cause in `source()`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

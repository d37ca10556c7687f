//! The testbed crate's integration tests: one binary, one module per area.
//!
//! - [`testbed`]: the testbed itself (real etcd and kube-apiserver processes);
//! - [`manifests`]: the install manifests and kind configs, checked and applied;
//! - [`e2e`]: three clusters with Meridian's real controller, gateway and DNS;
//! - [`demo`]: the `meridian-testbed demo` binary run to completion and stopped.
//!
//! Run one area with its module path as the filter, e.g.
//! `cargo test -p meridian-testbed --test integration manifests::`.

mod demo;
mod e2e;
mod manifests;
mod testbed;

//! The controller's integration tests, one module per area. Most run the controller binary
//! against the hermetic testbed: three real kube-apiservers (v1.20), two zones of one region
//! and one other region. `east1` and `east2` serve `discovery.k8s.io/v1` EndpointSlices (the
//! testbed's CRD; at most three endpoints per slice in `east1`, so services span several),
//! `west` only core/v1 Endpoints.
//!
//! The controller runs as its real binary in cluster `east1`; `east2` and `west` are
//! registered through kubeconfig Secrets. Needs the testbed binaries
//! (`tests/scripts/provision-k8s.sh`); fails loudly without them. [`grpc_tls`] also runs the
//! gRPC server in process.

mod certificates;
mod discovery_access;
mod endpoint_targets;
mod grpc_tls;
mod leader;
mod outage;
mod policy;
mod registration;
mod registration_security;
mod restart;
mod slices;
mod support;
mod vips;

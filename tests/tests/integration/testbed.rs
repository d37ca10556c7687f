//! Tests of the testbed itself, against real etcd and kube-apiserver processes.
//!
//! They need the binaries (`tests/scripts/provision-k8s.sh`) and `kubectl`; when either is
//! missing they fail with a message saying so, never skip.

mod support;

mod apiserver;
mod binary;
mod endpoint_slices;
mod netns;
mod pods;
mod startup;
mod teardown;

//! End-to-end: three simulated clusters with Meridian's real controller, gateway and DNS
//! processes in each, real requests through the gateways, real failures.
//!
//! `east` (region sh, zone 2000400001), `west` (sh, 200002), `far` (bj, bj-1). Callers are
//! in `east` unless a scenario says otherwise. east and west serve EndpointSlices
//! (`discovery.k8s.io/v1`), far core/v1 Endpoints only.

mod support;

mod admission;
mod bad_input;
mod cli;
mod dns;
mod drain;
mod endpoint_apis;
mod failover;
mod faults;
mod mcs;
mod mesh;
mod pinned;
mod policy;
mod resilience;
mod routing;
mod where_traffic_goes;

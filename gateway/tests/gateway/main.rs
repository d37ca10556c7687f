//! Integration tests of the gateway: real `meridian-gateway` processes on loopback
//! addresses, fed by fake controllers, with echo backends started here.

mod support;

mod admission;
mod blackhole;
mod e2e;
mod limits;
mod locality;
mod mtls;
mod outlier;
mod partition;
mod pinned;
mod reset;
mod reuse;
mod rotation;
mod timeout;

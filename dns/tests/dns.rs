//! Integration tests of `meridian-dns`: the real binary, fed by an in-process fake
//! controller (`meridian_api::testing::FakeDiscovery`), queried with real DNS clients
//! (`dig` from Debian's dnsutils, hickory's client, raw sockets for malformed packets).
//!
//! One test binary; one module per area, in `tests/dns/`.

#[path = "dns/harness.rs"]
mod harness;

#[path = "dns/lifecycle.rs"]
mod lifecycle;
#[path = "dns/load.rs"]
mod load;
#[path = "dns/malformed.rs"]
mod malformed;
#[path = "dns/records.rs"]
mod records;
#[path = "dns/updates.rs"]
mod updates;

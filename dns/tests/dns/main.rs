//! Integration tests of `meridian-dns`: the real binary, fed by an in-process fake
//! controller (`meridian_api::testing::FakeDiscovery`), queried with real DNS clients
//! (`dig` from Debian's dnsutils, hickory's client, raw sockets for malformed packets).
//!
//! One test binary; one module per area, shared set-up in [`support`].

mod support;

mod lifecycle;
mod load;
mod malformed;
mod records;
mod updates;

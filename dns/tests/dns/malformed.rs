//! Malformed packets never crash the server: they get FORMERR or are dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::support::{
    DROP_WAIT, Dns, REPLY_WAIT, framed, header, query_bytes, service, serving, snapshot,
    tcp_exchange, udp_exchange,
};

const FORMERR: u8 = 1;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;
const IN: u16 = 1;
const A: u16 = 1;
/// Recursion desired, as stub resolvers send.
const RD: u16 = 0x0100;

async fn server() -> (meridian_api::testing::FakeDiscovery, Dns) {
    serving(
        snapshot(1, vec![service("reviews", "default", "10.96.0.10")]),
        &[],
    )
    .await
}

/// Sends every packet over UDP (concurrently) and returns the replies, `None` for what got
/// no reply within `wait`.
async fn udp_all(
    addr: SocketAddr,
    packets: Vec<Vec<u8>>,
    wait: Duration,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut set = JoinSet::new();
    for packet in packets {
        set.spawn(async move {
            let reply = udp_exchange(addr, &packet, wait).await;
            (packet, reply)
        });
    }
    let mut results = Vec::new();
    while let Some(result) = set.join_next().await {
        results.push(result.expect("exchange"));
    }
    results
}

/// Asserts that a reply, if any, is FORMERR for the packet's id.
fn assert_formerr_or_dropped(packet: &[u8], reply: Option<&Vec<u8>>) {
    let Some(reply) = reply else { return };
    let reply_header = header(reply);
    assert!(reply_header.is_response, "{reply:?}");
    assert_eq!(
        reply_header.rcode, FORMERR,
        "packet {packet:?} got {reply:?}"
    );
    assert!(
        packet.len() >= 2,
        "a reply to a packet without an id: {reply:?}"
    );
    assert_eq!(reply_header.id, u16::from_be_bytes([packet[0], packet[1]]));
}

/// The server is still running and still answers correctly.
async fn assert_alive(dns: &mut Dns) {
    assert!(dns.is_running(), "meridian-dns died:\n{}", dns.log());
    for transport in ["+notcp", "+tcp"] {
        let dig = dns.dig(&[transport, "reviews.default.global"]).await;
        assert_eq!(dig.answers(), ["10.96.0.10"], "{}", dig.raw);
    }
}

/// A deterministic byte generator (xorshift), so any failure reproduces.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

#[tokio::test]
async fn truncated_queries_get_formerr_or_nothing() {
    let (_controller, mut dns) = server().await;
    let query = query_bytes(0x1234, RD, &[("reviews.default.global", A, IN)]);
    let cuts: Vec<Vec<u8>> = (0..query.len()).map(|len| query[..len].to_vec()).collect();
    // `formerr > 0` below depends on replies arriving in time: wait longer than DROP_WAIT
    // (the packets go out together, so this costs one wait, not one per packet).
    let results = udp_all(dns.addr, cuts.clone(), Duration::from_secs(5)).await;
    let mut formerr = 0;
    for (packet, reply) in &results {
        assert_formerr_or_dropped(packet, reply.as_ref());
        formerr += usize::from(reply.is_some());
        // Up to a complete header there is no id to answer to.
        if packet.len() < 12 {
            assert!(reply.is_none(), "{packet:?} got {reply:?}");
        }
    }
    for cut in &cuts {
        let reply = tcp_exchange(dns.addr, &framed(cut), DROP_WAIT).await;
        assert_formerr_or_dropped(cut, reply.as_ref());
    }
    // A frame whose length promises more than is sent, then the client gives up.
    let mut short = framed(&query);
    short.truncate(short.len() - 5);
    assert_formerr_or_dropped(
        &query,
        tcp_exchange(dns.addr, &short, DROP_WAIT).await.as_ref(),
    );
    println!(
        "truncated: {} cuts, {formerr} FORMERR, {} dropped",
        results.len(),
        results.len() - formerr
    );
    assert!(formerr > 0, "no truncated query got FORMERR");
    assert_alive(&mut dns).await;
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing() {
    let (_controller, mut dns) = server().await;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let packets: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let mut packet = noise.bytes(1 + (i * 7) % 512);
            // Half as queries (QR clear), so they get past the server's response filter.
            if i % 2 == 0 && !packet.is_empty() && packet.len() > 2 {
                packet[2] &= 0x7f;
            }
            packet
        })
        .collect();
    let results = udp_all(dns.addr, packets.clone(), DROP_WAIT).await;
    let answered = results.iter().filter(|(_, reply)| reply.is_some()).count();
    for (packet, reply) in &results {
        assert_formerr_or_dropped(packet, reply.as_ref());
    }
    for packet in packets.iter().take(30) {
        let reply = tcp_exchange(dns.addr, &framed(packet), DROP_WAIT).await;
        assert_formerr_or_dropped(packet, reply.as_ref());
    }
    println!(
        "garbage: {} packets, {answered} FORMERR, rest dropped",
        results.len()
    );
    assert_alive(&mut dns).await;
}

#[tokio::test]
async fn oversize_messages_get_formerr_or_nothing() {
    let (_controller, mut dns) = server().await;
    let mut noise = Noise(42);
    // A header claiming a record in every section, then 65 000 bytes of junk.
    let mut huge = query_bytes(0x0bad, RD, &[]);
    huge[4..12].copy_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    huge.extend(noise.bytes(65_000));
    // A name longer than 255 bytes.
    let long_name = ["a".repeat(63).as_str(); 5].join(".");
    let long = query_bytes(0x10e6, RD, &[(long_name.as_str(), A, IN)]);
    // The largest datagram IPv4 can carry, all junk.
    let mut jumbo = noise.bytes(65_507);
    jumbo[2] &= 0x7f;

    for (what, packet) in [("huge", &huge), ("long name", &long), ("jumbo", &jumbo)] {
        let reply = udp_exchange(dns.addr, packet, DROP_WAIT).await;
        println!(
            "oversize {what} over UDP: {}",
            if reply.is_some() {
                "FORMERR"
            } else {
                "dropped"
            }
        );
        assert_formerr_or_dropped(packet, reply.as_ref());
    }
    // Over TCP the length prefix caps a message at 65 535 bytes.
    let mut max_frame = vec![0xff, 0xff];
    max_frame.extend(&huge[..65_535.min(huge.len())]);
    max_frame.resize(65_537, 0);
    for (what, frame) in [("max frame", max_frame), ("long name", framed(&long))] {
        let reply = tcp_exchange(dns.addr, &frame, DROP_WAIT).await;
        println!(
            "oversize {what} over TCP: {}",
            if reply.is_some() {
                "FORMERR"
            } else {
                "dropped"
            }
        );
        assert_formerr_or_dropped(&frame[2..], reply.as_ref());
    }
    assert_alive(&mut dns).await;
}

#[tokio::test]
async fn wrong_classes_get_formerr_or_refused() {
    let (_controller, mut dns) = server().await;
    let name = "reviews.default.global";
    // Classes that are not valid in a question are malformed: FORMERR.
    for (class, id) in [(0_u16, 1_u16), (42, 2), (254, 3), (0xfe00, 4)] {
        let packet = query_bytes(id, RD, &[(name, A, class)]);
        let reply = udp_exchange(dns.addr, &packet, REPLY_WAIT)
            .await
            .unwrap_or_else(|| panic!("no reply for class {class}"));
        assert_eq!(header(&reply).rcode, FORMERR, "class {class}");
        assert_eq!(header(&reply).id, id);
        let reply = tcp_exchange(dns.addr, &framed(&packet), REPLY_WAIT)
            .await
            .expect("TCP reply");
        assert_eq!(header(&reply).rcode, FORMERR, "class {class} over TCP");
    }
    // CHAOS, Hesiod and ANY are real classes this server has no zones in: REFUSED,
    // like a name outside every zone.
    for class in [3_u16, 4, 255] {
        let packet = query_bytes(7, RD, &[(name, A, class)]);
        let reply = udp_exchange(dns.addr, &packet, REPLY_WAIT)
            .await
            .expect("reply");
        assert_eq!(header(&reply).rcode, REFUSED, "class {class}");
    }
    let chaos = dns.dig(&["version.bind", "TXT", "CH"]).await;
    assert_eq!(chaos.status, "REFUSED", "{}", chaos.raw);
    assert_alive(&mut dns).await;
}

#[tokio::test]
async fn questions_and_headers_that_do_not_make_a_query() {
    let (_controller, mut dns) = server().await;
    let name = "reviews.default.global";
    // No question, or two: FORMERR.
    for packet in [
        query_bytes(11, RD, &[]),
        query_bytes(12, RD, &[(name, A, IN), (name, A, IN)]),
    ] {
        let reply = udp_exchange(dns.addr, &packet, REPLY_WAIT)
            .await
            .expect("reply");
        assert_eq!(header(&reply).rcode, FORMERR, "{packet:?}");
    }
    // A response sent as a query is dropped (no reflection).
    let response = query_bytes(13, 0x8000 | RD, &[(name, A, IN)]);
    assert!(udp_exchange(dns.addr, &response, DROP_WAIT).await.is_none());
    // An opcode the server does not implement (STATUS).
    let status = query_bytes(14, 2 << 11, &[(name, A, IN)]);
    let reply = udp_exchange(dns.addr, &status, REPLY_WAIT)
        .await
        .expect("reply");
    assert_eq!(header(&reply).rcode, NOTIMP);
    assert_alive(&mut dns).await;
}

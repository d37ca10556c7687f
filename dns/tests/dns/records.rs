//! Every record type and response code, over UDP and TCP.

use crate::support::{Dns, service, serving, snapshot};

const NS: &str = "meridian-dns.meridian-system.svc.cluster.local.";

async fn reviews_server(extra: &[&str]) -> (meridian_api::testing::FakeDiscovery, Dns) {
    let mut v6 = service("ratings", "shop", "fd00::20");
    v6.cluster_vips.clear();
    serving(
        snapshot(3, vec![service("reviews", "default", "10.96.0.10"), v6]),
        extra,
    )
    .await
}

#[tokio::test]
async fn a_record_is_this_clusters_vip() {
    let (_controller, dns) = reviews_server(&[]).await;
    for transport in ["+notcp", "+tcp"] {
        let dig = dns.dig(&[transport, "reviews.default.global", "A"]).await;
        assert_eq!(dig.status, "NOERROR", "{}", dig.raw);
        assert!(dig.authoritative(), "{}", dig.raw);
        assert_eq!(dig.answers(), ["10.96.0.10"], "{}", dig.raw);
        let rr = &dig.answer[0];
        assert_eq!(
            (
                rr.name.as_str(),
                rr.ttl,
                rr.class.as_str(),
                rr.rtype.as_str()
            ),
            ("reviews.default.global.", 5, "IN", "A")
        );
    }
}

#[tokio::test]
async fn aaaa_record_for_an_ipv6_vip_and_nodata_for_the_other_family() {
    let (_controller, dns) = reviews_server(&[]).await;
    let dig = dns.dig(&["ratings.shop.global", "AAAA"]).await;
    assert_eq!(dig.status, "NOERROR", "{}", dig.raw);
    assert_eq!(dig.answers(), ["fd00::20"], "{}", dig.raw);

    for (name, rtype) in [
        ("ratings.shop.global", "A"),
        ("reviews.default.global", "AAAA"),
    ] {
        let dig = dns.dig(&[name, rtype]).await;
        assert_eq!(dig.status, "NOERROR", "{name} {rtype}: {}", dig.raw);
        assert!(dig.answer.is_empty(), "{name} {rtype}: {}", dig.raw);
        assert_eq!(dig.authority[0].rtype, "SOA", "{}", dig.raw);
    }
}

#[tokio::test]
async fn srv_record_targets_the_service_name_on_the_service_port() {
    let (_controller, dns) = reviews_server(&[]).await;
    for transport in ["+notcp", "+tcp"] {
        let dig = dns
            .dig(&[transport, "_http._tcp.reviews.default.global", "SRV"])
            .await;
        assert_eq!(dig.status, "NOERROR", "{}", dig.raw);
        assert!(dig.authoritative(), "{}", dig.raw);
        assert_eq!(
            dig.answers(),
            ["0 0 9080 reviews.default.global."],
            "{}",
            dig.raw
        );
        // The target's address comes along in the additional section.
        assert!(
            dig.additional
                .iter()
                .any(|rr| rr.name == "reviews.default.global." && rr.data == "10.96.0.10"),
            "{}",
            dig.raw
        );
    }
    // A port that does not exist, and a protocol that is not served.
    for name in [
        "_grpc._tcp.reviews.default.global",
        "_http._udp.reviews.default.global",
    ] {
        let dig = dns.dig(&[name, "SRV"]).await;
        assert_eq!(dig.status, "NXDOMAIN", "{name}: {}", dig.raw);
    }
}

#[tokio::test]
async fn cluster_pinned_names_answer_that_clusters_vip() {
    let (_controller, dns) = reviews_server(&[]).await;
    for (name, vip) in [
        ("east.reviews.default.global", "10.96.1.1"),
        ("west.reviews.default.global", "10.96.2.1"),
    ] {
        let dig = dns.dig(&[name, "A"]).await;
        assert_eq!(dig.status, "NOERROR", "{}", dig.raw);
        assert_eq!(dig.answers(), [vip], "{name}: {}", dig.raw);
    }
    let dig = dns.dig(&["north.reviews.default.global", "A"]).await;
    assert_eq!(dig.status, "NXDOMAIN", "{}", dig.raw);
}

#[tokio::test]
async fn soa_and_ns_at_the_apex() {
    let (_controller, dns) = reviews_server(&[]).await;
    for transport in ["+notcp", "+tcp"] {
        let soa = dns.dig(&[transport, "global", "SOA"]).await;
        assert_eq!(soa.status, "NOERROR", "{}", soa.raw);
        assert!(soa.authoritative(), "{}", soa.raw);
        assert_eq!(
            soa.answers(),
            [format!("{NS} hostmaster.global. 3 60 30 3600 5").as_str()],
            "{}",
            soa.raw
        );
        let ns = dns.dig(&[transport, "global", "NS"]).await;
        assert_eq!(ns.status, "NOERROR", "{}", ns.raw);
        assert_eq!(ns.answers(), [NS], "{}", ns.raw);
    }
}

#[tokio::test]
async fn unknown_names_are_nxdomain_with_the_soa_in_authority() {
    let (_controller, dns) = reviews_server(&[]).await;
    for transport in ["+notcp", "+tcp"] {
        for name in [
            "nope.default.global",
            "reviews.nope.global",
            "a.b.c.reviews.default.global",
        ] {
            let dig = dns.dig(&[transport, name, "A"]).await;
            assert_eq!(dig.status, "NXDOMAIN", "{name}: {}", dig.raw);
            assert!(dig.authoritative(), "{}", dig.raw);
            assert!(dig.answer.is_empty(), "{}", dig.raw);
            let soa = &dig.authority[0];
            assert_eq!((soa.name.as_str(), soa.rtype.as_str()), ("global.", "SOA"));
        }
    }
}

#[tokio::test]
async fn known_names_without_the_type_are_nodata() {
    let (_controller, dns) = reviews_server(&[]).await;
    for (name, rtype) in [
        ("reviews.default.global", "TXT"),
        ("reviews.default.global", "SRV"),
        ("_http._tcp.reviews.default.global", "A"),
        ("global", "A"),
        // Empty non-terminals exist (RFC 8020): the namespace and the `_tcp` label.
        ("default.global", "A"),
        ("_tcp.reviews.default.global", "SRV"),
    ] {
        let dig = dns.dig(&[name, rtype]).await;
        assert_eq!(dig.status, "NOERROR", "{name} {rtype}: {}", dig.raw);
        assert!(dig.answer.is_empty(), "{name} {rtype}: {}", dig.raw);
        assert!(dig.authoritative(), "{}", dig.raw);
        assert_eq!(dig.authority[0].rtype, "SOA", "{name} {rtype}: {}", dig.raw);
    }
}

#[tokio::test]
async fn names_outside_every_zone_are_refused() {
    let (_controller, dns) = reviews_server(&[]).await;
    for transport in ["+notcp", "+tcp"] {
        for name in [
            "example.com",
            "globalx",
            "reviews.default.global.example",
            ".",
        ] {
            let dig = dns.dig(&[transport, name, "A"]).await;
            assert_eq!(dig.status, "REFUSED", "{name}: {}", dig.raw);
            assert!(dig.answer.is_empty(), "{}", dig.raw);
        }
    }
}

#[tokio::test]
async fn names_are_case_insensitive() {
    let (_controller, dns) = reviews_server(&[]).await;
    for name in [
        "REVIEWS.DEFAULT.GLOBAL",
        "ReViEwS.dEfAuLt.GlObAl",
        "East.Reviews.Default.Global",
    ] {
        let dig = dns.dig(&[name, "A"]).await;
        assert_eq!(dig.status, "NOERROR", "{name}: {}", dig.raw);
        assert_eq!(dig.answer.len(), 1, "{name}: {}", dig.raw);
    }
    let srv = dns.dig(&["_HTTP._TCP.Reviews.Default.GLOBAL", "SRV"]).await;
    assert_eq!(
        srv.answers(),
        ["0 0 9080 reviews.default.global."],
        "{}",
        srv.raw
    );
}

#[tokio::test]
async fn ttl_flag_sets_record_and_negative_ttls() {
    let (_controller, dns) = reviews_server(&["--ttl", "30s"]).await;
    let dig = dns.dig(&["reviews.default.global", "A"]).await;
    assert_eq!(dig.answer[0].ttl, 30, "{}", dig.raw);
    let nx = dns.dig(&["nope.default.global", "A"]).await;
    let soa = &nx.authority[0];
    assert_eq!(soa.ttl, 30, "{}", nx.raw);
    assert!(soa.data.ends_with(" 30"), "SOA minimum: {}", nx.raw);
}

#[tokio::test]
async fn every_zone_flag_is_served() {
    let (_controller, dns) =
        reviews_server(&["--zone", "global", "--zone", "Mesh.Example.COM."]).await;
    for name in ["reviews.default.global", "reviews.default.mesh.example.com"] {
        let dig = dns.dig(&[name, "A"]).await;
        assert_eq!(dig.answers(), ["10.96.0.10"], "{name}: {}", dig.raw);
    }
    let soa = dns.dig(&["mesh.example.com", "SOA"]).await;
    assert!(
        soa.answers()[0].contains("hostmaster.mesh.example.com."),
        "{}",
        soa.raw
    );
    let dig = dns.dig(&["example.com", "A"]).await;
    assert_eq!(dig.status, "REFUSED", "{}", dig.raw);
}

#[tokio::test]
async fn zone_transfers_are_refused_and_updates_not_implemented() {
    use crate::support::{REPLY_WAIT, framed, header, query_bytes, tcp_exchange, udp_exchange};
    let (_controller, dns) = reviews_server(&[]).await;
    // AXFR (252) over TCP, as transfers are made.
    let axfr = query_bytes(21, 0, &[("global", 252, 1)]);
    let reply = tcp_exchange(dns.addr, &framed(&axfr), REPLY_WAIT)
        .await
        .expect("AXFR reply");
    assert_eq!(header(&reply).rcode, 5, "AXFR: REFUSED");
    // A dynamic UPDATE (opcode 5) naming the zone.
    let update = query_bytes(22, 5 << 11, &[("global", 6, 1)]);
    let reply = udp_exchange(dns.addr, &update, REPLY_WAIT)
        .await
        .expect("UPDATE reply");
    assert_eq!(header(&reply).rcode, 4, "UPDATE: NOTIMP");
}

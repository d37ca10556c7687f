//! Start-up, readiness, metrics, static stability and shutdown.

use meridian_api::testing::FakeDiscovery;

use crate::support::{Dns, PATIENCE, service, serving, snapshot};

#[tokio::test]
async fn before_the_first_snapshot_zone_names_fail_and_the_pod_is_not_ready() {
    let controller = FakeDiscovery::start().await.expect("fake controller");
    let dns = Dns::start(&controller, &[]).await;
    controller.wait_for_subscribers(1).await;

    assert_eq!(dns.get("/healthz/live").await.0, 200);
    assert_eq!(dns.get("/healthz/ready").await.0, 503);
    // SERVFAIL, not NXDOMAIN: an unknown answer must not be cached as a negative one.
    let dig = dns.dig(&["reviews.default.global"]).await;
    assert_eq!(dig.status, "SERVFAIL", "{}", dig.raw);
    let dig = dns.dig(&["example.com"]).await;
    assert_eq!(dig.status, "REFUSED", "{}", dig.raw);

    controller.push(snapshot(
        1,
        vec![service("reviews", "default", "10.96.0.10")],
    ));
    dns.wait_version(1).await;
    assert_eq!(dns.get("/healthz/ready").await.0, 200);
    assert_eq!(
        dns.dig(&["reviews.default.global"]).await.answers(),
        ["10.96.0.10"]
    );
}

#[tokio::test]
async fn metrics_count_queries_by_type_and_code_and_report_the_snapshot() {
    let (_controller, dns) = serving(
        snapshot(9, vec![service("reviews", "default", "10.96.0.10")]),
        &[],
    )
    .await;
    dns.dig(&["reviews.default.global", "A"]).await;
    dns.dig(&["reviews.default.global", "A"]).await;
    dns.dig(&["+tcp", "_http._tcp.reviews.default.global", "SRV"])
        .await;
    dns.dig(&["nope.default.global", "AAAA"]).await;
    dns.dig(&["example.com", "A"]).await;

    // A query is counted after its answer is sent, so dig may be done before the count is:
    // wait until all five are counted, then check how they were counted.
    let text = eventually_counted(&dns, 5.0).await;
    let sample = |name: &str| crate::support::metric(&text, name);
    assert_eq!(
        sample(r#"meridian_dns_queries_total{qtype="A",rcode="NOERROR",protocol="udp"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(r#"meridian_dns_queries_total{qtype="SRV",rcode="NOERROR",protocol="tcp"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(r#"meridian_dns_queries_total{qtype="AAAA",rcode="NXDOMAIN",protocol="udp"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(r#"meridian_dns_queries_total{qtype="A",rcode="REFUSED",protocol="udp"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample("meridian_dns_snapshot_version"), Some(9.0), "{text}");
    assert_eq!(
        sample("meridian_dns_controller_connected"),
        Some(1.0),
        "{text}"
    );
    // global.: SOA + NS + A + SRV + two pinned names; clusterset.local. (the default
    // --clusterset-domain): SOA + NS + dns-version TXT + A + SRV; the VIP's reverse zone:
    // SOA + NS + PTR.
    assert_eq!(sample("meridian_dns_zone_records"), Some(14.0), "{text}");
    let age = sample("meridian_dns_snapshot_age_seconds").expect("age");
    assert!(age >= 0.0, "{text}");
}

/// The `/metrics` text once the samples of `meridian_dns_queries_total` add up to at
/// least `queries`.
async fn eventually_counted(dns: &Dns, queries: f64) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = dns.metrics().await;
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("meridian_dns_queries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= queries {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {counted} of {queries} queries counted:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn keeps_answering_while_the_controller_is_away_and_catches_up_after() {
    let (mut controller, dns) = serving(
        snapshot(1, vec![service("reviews", "default", "10.96.0.10")]),
        &[],
    )
    .await;

    controller.stop().await;
    dns.wait_metric("meridian_dns_controller_connected", 0.0)
        .await;
    for transport in ["+notcp", "+tcp"] {
        let dig = dns.dig(&[transport, "reviews.default.global"]).await;
        assert_eq!(dig.answers(), ["10.96.0.10"], "{}", dig.raw);
    }
    assert_eq!(dns.get("/healthz/ready").await.0, 200);

    // The controller comes back (same address) with news.
    controller.push(snapshot(
        2,
        vec![service("reviews", "default", "10.96.0.20")],
    ));
    controller.restart().await.expect("restart");
    dns.wait_version(2).await;
    dns.wait_metric("meridian_dns_controller_connected", 1.0)
        .await;
    assert_eq!(
        dns.dig(&["reviews.default.global"]).await.answers(),
        ["10.96.0.20"]
    );
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let (_controller, mut dns) = serving(snapshot(1, vec![]), &[]).await;
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &dns.pid().to_string()])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = dns.wait_exit().await;
    assert!(exit.success(), "exit {exit}:\n{}", dns.log());
    assert!(dns.log().contains("stopped"), "{}", dns.log());
    assert!(!dns.is_running());
}

//! `.global` names resolve, in each cluster, to that cluster's VIP, asked (with `dig`) the
//! way a pod asks: through the cluster's resolver, an Unbound whose stub zone `global.`
//! points at that cluster's `meridian-dns`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use meridian_testbed::mesh::find_service;
use tokio::time::Instant;

use super::support::{NS, World};

/// The TTL `meridian-dns` gives every record in the mesh (its `--ttl` default).
const TTL: Duration = Duration::from_secs(5);

/// Runs `dig @server query…` and returns its trimmed output.
pub(super) fn dig(server: SocketAddr, query: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=3",
        ])
        .args(query)
        .output()
        .expect("running dig (Debian package dnsutils)");
    assert!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One answer: the response code and the answer records as (TTL, type, data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    pub status: String,
    pub records: Vec<(u32, String, String)>,
}

/// Asks `server` for `name` `qtype`.
pub(super) fn query(server: SocketAddr, name: &str, qtype: &str) -> Answer {
    let out = dig(server, &["+noall", "+comments", "+answer", name, qtype]);
    let status = out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .to_owned();
    let records = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // name TTL class type data…
            Some((
                f.get(1)?.parse().ok()?,
                f.get(3)?.to_string(),
                f[4..].join(" "),
            ))
        })
        .collect();
    Answer { status, records }
}

/// The cluster resolver of `cluster`.
pub(super) fn resolver(world: &World, cluster: &str) -> SocketAddr {
    world
        .mesh
        .member(cluster)
        .unwrap()
        .resolver_addr()
        .expect("the e2e world runs a resolver per cluster")
}

/// Resolves `name` at `server` until it answers `want`: the DNS server follows the same
/// snapshot stream as the gateway, so it may be a moment behind (and a resolver may hold a
/// cached answer for up to the TTL).
pub(super) async fn resolves_to(server: SocketAddr, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = dig(server, &["+short", name, "A"]);
        if answer == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} at {server}: {answer:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_names_resolve_to_each_clusters_vip_through_its_resolver() {
    let world = World::start().await;
    world.deploy("user", [1, 1, 1]).await;
    let host = format!("user.{NS}.global");
    let mut vips = Vec::new();
    for member in world.mesh.members() {
        world.converge(member.name(), "user", 3, 3).await;
        // The VIP is the managed Service's ClusterIP, which can follow the endpoints.
        let dump = world
            .mesh
            .wait_for(member.name(), "a VIP for user.demo.global", |d| {
                find_service(d, &host)
                    .and_then(|s| s["vip"].as_str())
                    .is_some_and(|v| !v.is_empty())
            })
            .await
            .unwrap();
        let vip = find_service(&dump, &host).unwrap()["vip"]
            .as_str()
            .unwrap()
            .to_owned();
        let resolver = resolver(&world, member.name());
        resolves_to(resolver, &host, &vip).await;

        // What the resolver answers is what meridian-dns answers, TTL at most its TTL.
        let a = query(resolver, &host, "A");
        assert_eq!(a.status, "NOERROR");
        assert_eq!(a.records.len(), 1, "{a:?}");
        let (ttl, kind, data) = &a.records[0];
        assert_eq!((kind.as_str(), data.as_str()), ("A", vip.as_str()));
        assert!(u64::from(*ttl) <= TTL.as_secs(), "{a:?}");
        let srv = query(resolver, &format!("_http._tcp.{host}"), "SRV");
        assert_eq!(srv.status, "NOERROR");
        assert_eq!(srv.records.len(), 1, "{srv:?}");
        assert!(
            srv.records[0].2.ends_with(&format!(" 80 {host}.")),
            "SRV in {}: {srv:?}",
            member.name()
        );
        assert!(u64::from(srv.records[0].0) <= TTL.as_secs(), "{srv:?}");
        let unknown = query(resolver, &format!("nope.{NS}.global"), "A");
        assert_eq!(unknown.status, "NXDOMAIN", "{unknown:?}");
        vips.push(vip);
    }
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), 3, "each cluster has its own VIP: {vips:?}");

    // The resolver caches for the TTL and no longer: the TTL it hands out counts down
    // within (0, TTL], and the answer is fetched again once it has run out.
    let east = resolver(&world, "east");
    let first = query(east, &host, "A").records[0].0;
    let mut seen = vec![first];
    let started = Instant::now();
    while started.elapsed() < TTL + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let a = query(east, &host, "A");
        assert_eq!(a.status, "NOERROR");
        seen.push(a.records[0].0);
    }
    assert!(
        seen.iter().all(|t| u64::from(*t) <= TTL.as_secs()),
        "{seen:?}"
    );
    assert!(
        seen.windows(2).any(|w| w[1] > w[0]),
        "refetched after expiry: {seen:?}"
    );
}

/// West stops serving `user`: traffic fails over to the other clusters, and
/// `west.user.demo.global` (the name pinned to west) goes away. Asked every 100 ms, east's
/// resolver keeps answering from its cache at most the TTL (plus a second for the polling
/// and the machine) after `meridian-dns` itself changed its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_follows_a_failover_within_the_ttl() {
    let world = World::start().await;
    let pods = world.deploy("user", [1, 1, 0]).await;
    world.converge("east", "user", 2, 2).await;
    let pinned = format!("west.user.{NS}.global");
    let dns = world.mesh.member("east").unwrap().dns_addr();
    let resolver = resolver(&world, "east");
    let deadline = Instant::now() + Duration::from_secs(60);
    while query(resolver, &pinned, "A").records.is_empty() {
        assert!(Instant::now() < deadline, "{pinned} never resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let west = world.cluster("west");
    west.delete_service(NS, "user").await.unwrap();
    west.remove_pod(&pods[1][0]).await.unwrap();
    let mut direct_changed = None;
    let give_up = Instant::now() + Duration::from_secs(60);
    let resolver_changed = loop {
        let direct = query(dns, &pinned, "A");
        if direct_changed.is_none() && direct.status == "NXDOMAIN" {
            direct_changed = Some(Instant::now());
        }
        let through = query(resolver, &pinned, "A");
        if through.status == "NXDOMAIN" {
            break Instant::now();
        }
        assert!(
            Instant::now() < give_up,
            "{pinned} still answered: {through:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let direct_changed = direct_changed.unwrap_or(resolver_changed);
    let lag = resolver_changed.saturating_duration_since(direct_changed);
    eprintln!("east's resolver followed meridian-dns {lag:?} later (TTL {TTL:?})");
    assert!(lag <= TTL + Duration::from_secs(1), "{lag:?}");
    // The global name still resolves, to the same VIP: the failover is behind it.
    assert_eq!(
        query(resolver, &format!("user.{NS}.global"), "A").status,
        "NOERROR"
    );
}

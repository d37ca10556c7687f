//! Network partitions between clusters, with real network namespaces
//! (`meridian_testbed::netns`): west's gateway and pods run in a namespace of their own,
//! joined to the others by one veth link. Cutting the link moves east's traffic to north;
//! healing it brings it back; 200 ms latency (a delaying relay) and 5% packet loss
//! (nftables) on it slow requests down without failing them. Needs root (CI runs as root); without it the tests fail naming the
//! missing capability.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_api::proto::Protocol;
use meridian_testbed::delay::DelayRelay;
use meridian_testbed::netns::{Link, Netns};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::{
    Backend, Certs, Gateway, Mesh, PATIENCE, endpoint, eventually, http_get, service,
};

/// An HTTP server answering `west/<pod>` on `listener` (bound inside the namespace).
fn serve(listener: std::net::TcpListener, pod: &'static str) {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        format!("west/{pod}"),
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// East (r1/z1) calling `api.default.global`, served by west (r1/z2, in its own
/// namespace behind `link`) and, as failover, north (r2/z3).
struct Partitioned {
    east: Gateway,
    _west: Gateway,
    _north: Gateway,
    /// The delay relay in front of west, if any.
    relay: Option<DelayRelay>,
    _north_pod: Backend,
    link: Link,
    // Dropped last: the link and west's process go first.
    _ns: Netns,
    port: u16,
}

impl Partitioned {
    /// With `delay`, east and north reach west's gateway through a [`DelayRelay`] at the
    /// root end of the link, holding traffic bound for west that long.
    async fn start(
        east_ip: Ipv4Addr,
        north_ip: Ipv4Addr,
        port: u16,
        flags: &[&str],
        delay: Option<Duration>,
    ) -> Self {
        let ns = Netns::create().unwrap_or_else(|e| panic!("partition test setup: {e}"));
        let link = Link::connect(&ns).unwrap_or_else(|e| panic!("partition test setup: {e}"));
        let mesh = Mesh::new();
        // West's pods on the namespace's own loopback: only its gateway reaches them.
        let mut west_eps = Vec::new();
        for (i, pod) in ["w0", "w1"].into_iter().enumerate() {
            let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 70, i as u8 + 1), 8080));
            serve(ns.listen(addr).unwrap(), pod);
            west_eps.push(endpoint("west", addr, ("r1", "z2"), true));
        }
        let north_pod_ip = Ipv4Addr::new(127, 0, 66, north_ip.octets()[2]);
        let north_pod = Backend::http(north_pod_ip, "north", "n0").await;
        let ports: Vec<u16> = {
            let held: Vec<_> = (0..3)
                .map(|_| ns.listen(SocketAddr::from((link.ns_ip, 0))).unwrap())
                .collect();
            held.iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect()
        };
        let west = Gateway::start_in_netns(
            ns.name(),
            link.root_ip,
            [ports[0], ports[1], ports[2]],
            "west",
            link.ns_ip,
            ("r1", "z2"),
            Certs::Files(mesh.ca.issue("west")),
            flags,
        )
        .await;
        let relay = match delay {
            Some(delay) => Some(
                DelayRelay::start(SocketAddr::from((link.root_ip, 0)), west.tunnel, delay)
                    .await
                    .unwrap_or_else(|e| panic!("partition test setup: delay relay: {e}")),
            ),
            None => None,
        };
        let mut west_peer = west.as_peer();
        if let Some(relay) = &relay {
            west_peer.address = relay.addr().to_string();
        }
        let (east, north) = tokio::join!(
            mesh.gateway_with("east", east_ip, ("r1", "z1"), flags),
            mesh.gateway_with("north", north_ip, ("r2", "z3"), flags),
        );
        let mut eps = west_eps;
        eps.push(endpoint("north", north_pod.addr, ("r2", "z3"), true));
        let svc = vec![service(
            "api.default.global",
            Protocol::Http,
            80,
            port,
            eps,
            "",
        )];
        tokio::join!(
            east.push(1, svc.clone(), vec![west_peer.clone(), north.as_peer()]),
            west.push(1, svc.clone(), vec![east.as_peer(), north.as_peer()]),
            north.push(1, svc.clone(), vec![east.as_peer(), west_peer]),
        );
        eventually("east sees both peers up", || async {
            let dump = east.config_dump().await;
            (dump["peers"]["west"]["up"] == true && dump["peers"]["north"]["up"] == true)
                .then_some(())
        })
        .await;
        Partitioned {
            east,
            _west: west,
            _north: north,
            relay,
            _north_pod: north_pod,
            link,
            _ns: ns,
            port,
        }
    }

    /// One GET through east on a fresh connection: the answering cluster, or the failure.
    async fn get(&self) -> Result<String, String> {
        match http_get(self.east.listener(self.port), "/", &[])
            .await
            .map(|r| (r.status, r.text()))
            .map_err(|e| e.to_string())
        {
            Ok((200, body)) => Ok(body.split('/').next().unwrap_or_default().to_owned()),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e),
        }
    }
}

/// The link to west is cut (packets dropped, nothing reset) while east sends sequential
/// GETs every 10 ms: traffic moves to north; healed, it comes back to west. Failed
/// requests and both switch times are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_fails_over_to_a_reachable_cluster_and_healing_brings_it_back() {
    // A short tunnel keepalive, so a silent partition is noticed in about two seconds.
    let world = Partitioned::start(
        Ipv4Addr::new(127, 0, 67, 1),
        Ipv4Addr::new(127, 0, 67, 3),
        27180,
        &["--tunnel-keepalive", "1s"],
        None,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(world.get().await.as_deref(), Ok("west"));
    }

    world.link.cut().unwrap();
    let cut = Instant::now();
    let (mut sent, mut failed, mut moved) = (0, Vec::new(), None);
    while cut.elapsed() < PATIENCE {
        sent += 1;
        match world.get().await {
            Ok(c) if c == "north" => {
                moved.get_or_insert(cut.elapsed());
            }
            Ok(_) => {}
            Err(e) => failed.push(e),
        }
        if moved.is_some_and(|_| sent >= 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = moved.expect("traffic moved to north after the link to west was cut");
    for _ in 0..20 {
        assert_eq!(world.get().await.as_deref(), Ok("north"));
    }

    world.link.heal().unwrap();
    let healed = Instant::now();
    eventually("traffic back on west after healing", || async {
        (world.get().await.as_deref() == Ok("west")).then_some(())
    })
    .await;
    let back = healed.elapsed();
    println!(
        "partition: {} of {sent} GETs failed after the cut ({failed:?}); moved to north after {moved:?}; back on west {back:?} after healing",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "idempotent requests failed across the partition: {failed:?}"
    );
}

/// 200 ms added latency and 5% packet loss on the link to west: every request still
/// succeeds; latency percentiles are printed.
///
/// Not `tc netem`: CI's kernel, like the development VM's, has no netem
/// (`CONFIG_NET_SCH_NETEM` unset) and no other qdisc that delays. Loss is real packet
/// loss on the veth: an nftables rule in west's namespace drops 5% of the packets in each
/// direction at random (`numgen random mod 100 < 5 drop`, [`Link::lose`]), so TCP
/// retransmits. Latency comes from a userspace relay at the root end of the link
/// ([`DelayRelay`]): east's tunnel to west goes through it, and it holds every chunk
/// bound for west 200 ms (the connection's opening too), so each round trip grows by
/// 200 ms as with netem delaying one direction. The test asserts traffic went through the
/// relay and that packets were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_on_a_link_slow_requests_but_none_fails() {
    let world = Partitioned::start(
        Ipv4Addr::new(127, 0, 68, 1),
        Ipv4Addr::new(127, 0, 68, 3),
        27181,
        &[],
        Some(Duration::from_millis(200)),
    )
    .await;
    let relay = world.relay.as_ref().expect("started with a delay relay");
    assert_eq!(world.get().await.as_deref(), Ok("west"));
    world
        .link
        .lose(5)
        .unwrap_or_else(|e| panic!("packet loss: {e}"));
    let mut times = Vec::new();
    let mut from_west = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let answer = world.get().await;
        times.push(start.elapsed());
        match answer {
            Ok(c) => from_west += usize::from(c == "west"),
            Err(e) => panic!("a request failed on the impaired link: {e}"),
        }
    }
    let dropped = world.link.dropped().unwrap();
    world.link.clear().unwrap();
    times.sort();
    let pct = |p: usize| times[(times.len() * p).div_ceil(100) - 1];
    println!(
        "200 ms delay (relay) + 5% loss (nftables): 50 of 50 GETs answered ({from_west} by west); \
         p50 {:?}, p99 {:?}; {} tunnel connection(s) through the relay, {dropped} packets dropped",
        pct(50),
        pct(99),
        relay.accepted(),
    );
    assert!(
        relay.accepted() > 0,
        "east's tunnel to west did not go through the delay relay"
    );
    assert!(dropped > 0, "the loss rule dropped no packet");
}

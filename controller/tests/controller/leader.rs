use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use meridian_controller::crd::GlobalService;
use meridian_testbed::{PodSpec, SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec};
use tokio::time::Instant;

use crate::support::*;

const LEASE: &str = "meridian-controller";

/// `meridian_controller_leader` of a controller.
async fn leads(ctl: &Controller) -> Option<bool> {
    let text = ctl.metrics_text().await;
    text.lines().find_map(|l| match l {
        "meridian_controller_leader 1" => Some(true),
        "meridian_controller_leader 0" => Some(false),
        _ => None,
    })
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get(LEASE).await.ok()?.spec?.holder_identity
}

async fn managed_services(east1: &meridian_testbed::Cluster) -> usize {
    Api::<Service>::namespaced(east1.client(), SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
        .await
        .unwrap()
        .items
        .len()
}

/// A TCP relay to `cluster`'s API server on the server's own address (so its
/// certificate still matches), and a kubeconfig pointing at it.
async fn api_relay(
    cluster: &meridian_testbed::Cluster,
    port: u16,
) -> (meridian_testbed::delay::DelayRelay, String) {
    let mut kubeconfig: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(cluster.kubeconfig()).unwrap();
    let server = kubeconfig["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned();
    let api: std::net::SocketAddr = server.trim_start_matches("https://").parse().unwrap();
    let relay = eventually("the API relay listening", || async move {
        meridian_testbed::delay::DelayRelay::start(
            std::net::SocketAddr::new(api.ip(), port),
            api,
            Duration::ZERO,
        )
        .await
        .ok()
    })
    .await;
    kubeconfig["clusters"][0]["cluster"]["server"] = format!("https://{}", relay.addr()).into();
    (relay, serde_yaml_ng::to_string(&kubeconfig).unwrap())
}

/// Managed VIP Services by (global service, pinned cluster or ""), with their names: a
/// duplicate would list two names under one key.
async fn vip_services(
    east1: &meridian_testbed::Cluster,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<_, Vec<String>> = BTreeMap::new();
    for s in Api::<Service>::namespaced(east1.client(), SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
        .await
        .unwrap()
        .items
    {
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        let of = |k: &str| annotations.get(k).cloned().unwrap_or_default();
        out.entry((
            of("meridian.io/global-service"),
            of("meridian.io/pinned-cluster"),
        ))
        .or_default()
        .push(s.metadata.name.unwrap_or_default());
    }
    out
}

/// The leader's own API server cut off (its connections through a relay closed and
/// refused): it steps down, the follower takes the Lease once it expires and writes
/// for a service that appears meanwhile; after healing, the old leader follows — one
/// leader, and one VIP Service per global service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_api_server_steps_down_and_no_vip_service_is_doubled() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let http = ServicePortSpec::http("http", 80).target(8080);
    east1
        .create_service(&ServiceSpec::new("alpha").port(http.clone()))
        .await
        .unwrap();
    east1
        .add_pod(PodSpec::new("alpha-1").app("alpha"))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let lease_args = |id: &'static str| ["--leader-identity", id, "--lease-duration", "6s"];

    // a reaches the API server only through the relay; it starts first and leads.
    let (relay, kubeconfig) = api_relay(east1, 0).await;
    let port = relay.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let a_ip = testbed.allocate_address().unwrap();
    let a = Controller::start_with_kubeconfig(&testbed, east1, a_ip, &path, &lease_args("a")).await;
    eventually("a leads", || {
        let leases = leases.clone();
        let a = &a;
        async move {
            (holder(&leases).await.as_deref() == Some("a") && leads(a).await == Some(true))
                .then_some(())
        }
    })
    .await;
    let b_ip = testbed.allocate_address().unwrap();
    let b = Controller::start(&testbed, east1, b_ip, &lease_args("b")).await;
    // alpha's VIP Services: the global one and the one pinned to east1.
    let before = eventually("alpha's VIP Services written by a", || async {
        let s = vip_services(east1).await;
        (s.len() == 2).then_some(s)
    })
    .await;
    assert_eq!(leads(&b).await, Some(false), "b follows");

    // Cut a off its API server.
    drop(relay);
    let cut = tokio::time::Instant::now();
    eventually("b takes the Lease", || {
        let leases = leases.clone();
        let b = &b;
        async move {
            (holder(&leases).await.as_deref() == Some("b") && leads(b).await == Some(true))
                .then_some(())
        }
    })
    .await;
    let took_over = cut.elapsed();
    eventually("a stepped down", || async {
        (leads(&a).await == Some(false)).then_some(())
    })
    .await;
    east1
        .create_service(&ServiceSpec::new("beta").port(http))
        .await
        .unwrap();
    eventually("beta's VIP Services written by b", || async {
        (vip_services(east1).await.len() == 4).then_some(())
    })
    .await;

    // Heal: the relay is back on the same port; a reconnects and follows.
    let (_healed, _) = api_relay(east1, port).await;
    let mut a_sub = a.subscribe().await;
    a_sub
        .wait_for("a serves beta with the VIP b allocated", |s| {
            service(s, "beta.default.global").is_some_and(|g| !g.vip.is_empty())
        })
        .await;
    let (la, lb) = (leads(&a).await, leads(&b).await);
    let services = vip_services(east1).await;
    println!(
        "leader cut off: b led {took_over:?} after the cut (lease 6 s); after healing a leads {la:?}, b leads {lb:?}, VIP Services {services:?}"
    );
    assert_eq!((la, lb), (Some(false), Some(true)), "one leader: b");
    assert_eq!(holder(&leases).await.as_deref(), Some("b"));
    assert!(
        services.len() == 4 && services.values().all(|names| names.len() == 1),
        "one VIP Service per global service and pin: {services:?}"
    );
    for (key, names) in &before {
        assert_eq!(services.get(key), Some(names), "alpha's VIP Services kept");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_follower_takes_over_when_it_dies() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let http = ServicePortSpec::http("http", 80).target(8080);
    east1
        .create_service(&ServiceSpec::new("alpha").port(http.clone()))
        .await
        .unwrap();
    east1
        .add_pod(PodSpec::new("alpha-1").app("alpha"))
        .await
        .unwrap();

    // Someone else holds the Lease and keeps renewing it. Replicas judge expiry by the
    // Lease's own duration: 10 s, so a renewal delayed on a loaded machine does not
    // hand the Lease over while the test checks that neither replica leads.
    let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let now = || MicroTime(Timestamp::now());
    let mut lease = Lease::default();
    lease.metadata.name = Some(LEASE.into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some("intruder".into()),
        lease_duration_seconds: Some(10),
        acquire_time: Some(now()),
        renew_time: Some(now()),
        ..LeaseSpec::default()
    });
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renewer = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                let patch = serde_json::json!({"spec": {"renewTime": now()}});
                let _ = leases
                    .patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // The leader renews a third of the duration before expiry: 6 s leaves 2 s for a
    // renewal on a loaded machine before a follower may take over.
    let lease_args = |id: &'static str| ["--leader-identity", id, "--lease-duration", "6s"];
    let a_ip = testbed.allocate_address().unwrap();
    let b_ip = testbed.allocate_address().unwrap();
    let a = Controller::start(&testbed, east1, a_ip, &lease_args("a")).await;
    let b = Controller::start(&testbed, east1, b_ip, &lease_args("b")).await;
    let (mut a_sub, mut b_sub) = (a.subscribe().await, b.subscribe().await);

    // Neither leads: both serve the catalog, neither writes (the leader applies the VIP
    // Service before it publishes a snapshot with the service, so none means none).
    for sub in [&mut a_sub, &mut b_sub] {
        let snap = sub
            .wait_for("alpha in the catalog", |s| {
                service(s, "alpha.default.global").is_some()
            })
            .await;
        let g = service(&snap, "alpha.default.global").unwrap();
        assert_eq!(g.vip, "", "a follower allocates no VIP");
        assert!(g.ports.iter().all(|p| p.listener_port == 0));
    }
    assert_eq!(managed_services(east1).await, 0);
    let gs_api: Api<GlobalService> = Api::all(east1.client());
    assert!(
        gs_api.get("alpha.default").await.is_err(),
        "no status written"
    );
    assert_eq!(leads(&a).await, Some(false));
    assert_eq!(leads(&b).await, Some(false));
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));

    // The intruder stops renewing: one of the two takes over and writes.
    renewer.abort();
    let (leader, follower) = eventually("one controller leads", || {
        let leases = leases.clone();
        let (a, b) = (&a, &b);
        async move {
            let h = holder(&leases).await?;
            let (la, lb) = (leads(a).await?, leads(b).await?);
            match (h.as_str(), la, lb) {
                ("a", true, false) => Some(("a", "b")),
                ("b", false, true) => Some(("b", "a")),
                _ => None,
            }
        }
    })
    .await;
    // A VIP once the service and its pin are fully allocated (the follower may see the
    // leader's managed Services one by one).
    let vip_of = |s: &meridian_api::proto::Snapshot, host: &str| {
        service(s, host)
            .filter(|g| {
                !g.cluster_vips.is_empty()
                    && g.cluster_vips.iter().all(|c| !c.vip.is_empty())
                    && g.ports.iter().all(|p| p.listener_port != 0)
            })
            .map(|g| g.vip.clone())
            .filter(|v| !v.is_empty())
    };
    let a_vip = a_sub
        .wait_for("alpha with a VIP", |s| {
            vip_of(s, "alpha.default.global").is_some()
        })
        .await;
    let b_vip = b_sub
        .wait_for("alpha with a VIP", |s| {
            vip_of(s, "alpha.default.global").is_some()
        })
        .await;
    // The follower serves what the leader applied: the same VIPs and listeners.
    let a_alpha = service(&a_vip, "alpha.default.global").unwrap();
    let b_alpha = service(&b_vip, "alpha.default.global").unwrap();
    assert_eq!(a_alpha.vip, b_alpha.vip);
    assert_eq!(a_alpha.ports, b_alpha.ports);
    assert_eq!(a_alpha.cluster_vips, b_alpha.cluster_vips);
    assert_eq!(a_alpha.cluster_vips.len(), 1, "pinned to east1");
    eventually("GlobalService alpha.default written", || {
        let gs_api = gs_api.clone();
        async move { gs_api.get("alpha.default").await.ok() }
    })
    .await;

    // The leader dies without releasing the Lease; the follower takes over once it
    // expires and allocates for a service that appears meanwhile.
    let (dead, survivor, mut survivor_sub) = if leader == "a" {
        (a, b, b_sub)
    } else {
        (b, a, a_sub)
    };
    let killed = Instant::now();
    dead.kill().await;
    east1
        .create_service(&ServiceSpec::new("beta").port(http))
        .await
        .unwrap();
    let snap = survivor_sub
        .wait_for("beta with a VIP from the new leader", |s| {
            vip_of(s, "beta.default.global").is_some()
        })
        .await;
    eprintln!(
        "takeover: {follower} allocated for a new service {:?} after the leader was killed (lease 6 s)",
        killed.elapsed()
    );
    assert_eq!(
        vip_of(&snap, "alpha.default.global").as_deref(),
        Some(a_alpha.vip.as_str()),
        "the new leader keeps the old allocation"
    );
    assert_eq!(
        service(&snap, "alpha.default.global").unwrap().ports,
        a_alpha.ports
    );
    assert_eq!(holder(&leases).await.as_deref(), Some(follower));
    assert_eq!(leads(&survivor).await, Some(true));

    // A replica that joins as a follower never hands out a snapshot without the VIPs:
    // its very first one already has what the leader applied.
    let c_ip = testbed.allocate_address().unwrap();
    let c = Controller::start(&testbed, east1, c_ip, &lease_args("c")).await;
    let mut c_sub = c.subscribe().await;
    let first = c_sub.next().await.unwrap().expect("a first snapshot");
    assert_eq!(
        vip_of(&first, "alpha.default.global").as_deref(),
        Some(a_alpha.vip.as_str()),
        "{first:#?}"
    );
    assert_eq!(leads(&c).await, Some(false));
    c.kill().await;
    eventually("GlobalService beta.default written", || {
        let gs_api = gs_api.clone();
        async move { gs_api.get("beta.default").await.ok() }
    })
    .await;
    survivor.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_streams_and_releases_the_lease() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &["--leader-identity", "only"]).await;
    eventually("the only replica leads", || {
        let leases = leases.clone();
        let ctl = &ctl;
        async move {
            (holder(&leases).await.as_deref() == Some("only") && leads(ctl).await?).then_some(())
        }
    })
    .await;
    let mut sub = ctl.subscribe().await;
    sub.wait_for("a first snapshot", |_| true).await;

    let asked = Instant::now();
    let status = ctl.terminate().await;
    eprintln!(
        "controller exited {:?} after SIGTERM with a Watch stream open",
        asked.elapsed()
    );
    assert!(status.success(), "{status:?}");
    // The stream was ended by the server, not cut: a clean end of stream.
    let end = tokio::time::timeout(CONVERGE, sub.next()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    // The Lease is free for a successor at once.
    assert_eq!(holder(&leases).await, None);
}

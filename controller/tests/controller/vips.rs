//! Issue 11 §2 and §3 through the real binary: one VIP that does not fit is refused on
//! its own; a Service under a managed name that is not the VIP's is never written.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as CoreServiceSpec};
use kube::api::{Api, PostParams};
use meridian_controller::catalog::ServiceKey;
use meridian_controller::crd::GlobalService;
use meridian_controller::vip::{
    GLOBAL_SERVICE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, VipKey, legacy_managed_service_name,
    managed_service_name,
};
use meridian_testbed::{SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec};

use crate::support::*;

/// The `VipAllocated` condition of a GlobalService, once its status has one with `reason`.
async fn vip_condition(gs: &Api<GlobalService>, name: &str, reason: &str) -> (String, String) {
    eventually(
        &format!("{name} VipAllocated reason {reason}"),
        || async move {
            let st = gs.get(name).await.ok()?.status?;
            let c = st.conditions.iter().find(|c| c.type_ == "VipAllocated")?;
            (c.reason == reason).then(|| (c.status.clone(), c.message.clone()))
        },
    )
    .await
}

/// A 4-port range: `a` (one port: its VIP and its pin to east1) keeps both after a
/// 4-port `b` is added; `b` is refused with `PortsExhausted`. Before the fix the whole
/// allocation failed and the snapshot lost `a`'s VIP and listener ports too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_fit_leaves_the_others_their_vips() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    east1
        .create_service(&ServiceSpec::new("a").port(ServicePortSpec::http("http", 80)))
        .await
        .unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &["--listener-ports", "15100-15103"]).await;
    let mut sub = ctl.subscribe().await;
    let first = sub
        .wait_for("a has its VIP, its pin and listener ports", |s| {
            service(s, "a.default.global").is_some_and(|a| {
                !a.vip.is_empty()
                    && a.ports.iter().all(|p| p.listener_port != 0)
                    && a.cluster_vips.iter().any(|c| !c.vip.is_empty())
            })
        })
        .await;
    let a_before = service(&first, "a.default.global").unwrap().clone();

    let mut b = ServiceSpec::new("b");
    for (i, name) in ["p1", "p2", "p3", "p4"].into_iter().enumerate() {
        b = b.port(ServicePortSpec::tcp(name, 9000 + i as u16));
    }
    east1.create_service(&b).await.unwrap();
    let gs: Api<GlobalService> = Api::all(east1.client());
    let (status, message) = vip_condition(&gs, "b.default", "PortsExhausted").await;
    assert_eq!(status, "False");
    assert!(message.contains("15100-15103"), "{message}");
    let with_b = sub
        .wait_for("b is listed", |s| service(s, "b.default.global").is_some())
        .await;
    // Every snapshot from now on keeps a's VIP and ports.
    for snap in std::iter::once(with_b).chain(sub.drain(std::time::Duration::from_secs(2)).await) {
        let a = service(&snap, "a.default.global").unwrap();
        assert_eq!(a, &a_before, "a keeps its VIP, pin and listener ports");
        let b = service(&snap, "b.default.global").unwrap();
        assert!(b.vip.is_empty() && b.ports.iter().all(|p| p.listener_port == 0));
    }
    let a_status = gs.get("a.default").await.unwrap().status.unwrap();
    assert_eq!(a_status.vip.as_deref(), Some(a_before.vip.as_str()));
    let text = ctl.metrics_text().await;
    assert_eq!(
        sample(&text, r#"meridian_vip_refusals{reason="PortsExhausted"}"#),
        Some(2.0),
        "b's VIP and its pin: {text}"
    );
    ctl.kill().await;
}

/// Managed Service names: a Service that carries the name the controller computes for
/// `default/c` but is not `c`'s (not managed, annotated for another service) is never
/// written, and `c` is refused with `NameConflict`; a Service written by an earlier
/// version under the 24-bit name keeps its name and ClusterIP (migration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_under_a_vips_name_that_is_not_its_own_is_not_patched() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let services: Api<Service> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let object = |name: String, annotation: &str, managed: bool, target: i32| Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name),
            labels: managed
                .then(|| BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())])),
            annotations: Some(BTreeMap::from([(
                GLOBAL_SERVICE_ANNOTATION.to_owned(),
                annotation.to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(CoreServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(target),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let taken = managed_service_name(&VipKey::global(ServiceKey::new("default", "c")));
    let foreign = services
        .create(
            &PostParams::default(),
            &object(taken.clone(), "default/other", false, 1234),
        )
        .await
        .unwrap();
    let legacy = legacy_managed_service_name(&VipKey::global(ServiceKey::new("default", "e")));
    let old = services
        .create(
            &PostParams::default(),
            &object(legacy.clone(), "default/e", true, 15150),
        )
        .await
        .unwrap();
    for name in ["c", "e"] {
        east1
            .create_service(&ServiceSpec::new(name).port(ServicePortSpec::http("http", 80)))
            .await
            .unwrap();
    }
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let gs: Api<GlobalService> = Api::all(east1.client());
    let (status, message) = vip_condition(&gs, "c.default", "NameConflict").await;
    assert_eq!(status, "False");
    assert!(
        message.contains(&taken) && message.contains("belongs to other.default"),
        "{message}"
    );
    let snap = ctl
        .subscribe()
        .await
        .wait_for("e has its VIP", |s| {
            service(s, "e.default.global").is_some_and(|e| !e.vip.is_empty())
        })
        .await;
    // The legacy Service is e's: same ClusterIP, same listener port, same name.
    let e = service(&snap, "e.default.global").unwrap();
    let old_ip = old.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert_eq!(e.vip, old_ip);
    assert_eq!(e.ports[0].listener_port, 15150);
    assert!(services.get_opt(&legacy).await.unwrap().is_some());
    let c = service(&snap, "c.default.global").unwrap();
    assert!(c.vip.is_empty(), "c has no VIP: {c:?}");
    // The foreign Service is exactly as it was.
    let now = services.get(&taken).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(
        now.metadata.annotations.as_ref().unwrap()[GLOBAL_SERVICE_ANNOTATION],
        "default/other"
    );
    let text = ctl.metrics_text().await;
    assert_eq!(
        sample(&text, r#"meridian_vip_refusals{reason="NameConflict"}"#),
        Some(1.0),
        "{text}"
    );
    ctl.kill().await;
}

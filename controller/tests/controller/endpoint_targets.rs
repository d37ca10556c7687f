//! Issue 11 §5 through the real binary and a real API server: a hand-written endpoint of
//! a selectorless Service whose `targetRef` names one of the namespace's own Pods is a
//! tunnel target only at that Pod's IP (`status.podIP`, as the member reports it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
    ServicePort, ServiceSpec as CoreServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use meridian_controller::catalog::EXPORT_LABEL;
use meridian_controller::crd::GlobalService;
use meridian_testbed::{PodHandle, PodSpec, Testbed};

use crate::support::*;

/// An address naming `pod` (and its node: without one the status write fails today, a
/// separate bug with an empty locality).
fn address(ip: String, pod: &PodHandle) -> EndpointAddress {
    EndpointAddress {
        ip,
        node_name: Some(pod.node().into()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace().into()),
            name: Some(pod.name().into()),
            ..ObjectReference::default()
        }),
        ..EndpointAddress::default()
    }
}

/// `manual` lists its own pod at its IP, and the same pod's name next to a pod of
/// another namespace's IP: only the first is in the snapshot; the second is counted as
/// `address_not_pod_ip` and named in `Ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_endpoint_is_a_target_only_at_its_pods_ip() {
    init_tracing();
    // On core/v1 Endpoints, the API these hand-written objects use.
    let east1 = clusters()
        .remove(0)
        .endpoint_api(meridian_testbed::EndpointApi::Endpoints);
    let testbed = Testbed::start(&[east1]).await.expect("testbed starts");
    let east1 = testbed.cluster("east1").unwrap();
    let own = east1.add_pod(PodSpec::new("own").app("own")).await.unwrap();
    let victim = east1
        .add_pod(PodSpec::new("victim").namespace("other").app("victim"))
        .await
        .unwrap();
    let meta = || ObjectMeta {
        name: Some("manual".into()),
        namespace: Some("default".into()),
        labels: Some(BTreeMap::from([(EXPORT_LABEL.into(), "true".into())])),
        ..ObjectMeta::default()
    };
    Api::<Service>::namespaced(east1.client(), "default")
        .create(
            &PostParams::default(),
            &Service {
                metadata: meta(),
                spec: Some(CoreServiceSpec {
                    ports: Some(vec![ServicePort {
                        name: Some("tcp".into()),
                        port: 80,
                        ..ServicePort::default()
                    }]),
                    ..CoreServiceSpec::default()
                }),
                ..Service::default()
            },
        )
        .await
        .unwrap();
    Api::<Endpoints>::namespaced(east1.client(), "default")
        .create(
            &PostParams::default(),
            &Endpoints {
                metadata: ObjectMeta {
                    labels: None,
                    ..meta()
                },
                subsets: Some(vec![EndpointSubset {
                    addresses: Some(vec![
                        address(own.pod_ip().to_string(), &own),
                        address(victim.pod_ip().to_string(), &own),
                    ]),
                    ports: Some(vec![EndpointPort {
                        name: Some("tcp".into()),
                        port: 8080,
                        ..EndpointPort::default()
                    }]),
                    ..EndpointSubset::default()
                }]),
            },
        )
        .await
        .unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let mut sub = ctl.subscribe().await;
    let snap = sub
        .wait_for("manual has its own pod's endpoint", |s| {
            service(s, "manual.default.global").is_some_and(|g| !g.endpoints.is_empty())
        })
        .await;
    let g = service(&snap, "manual.default.global").unwrap();
    let addresses: Vec<&str> = g.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, [own.pod_ip().to_string()]);
    let gs: Api<GlobalService> = Api::all(east1.client());
    let message = eventually("manual's Ready names the skipped endpoint", || async {
        let st = gs.get("manual.default").await.ok()?.status?;
        let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
        c.message.contains("skipped").then(|| c.message.clone())
    })
    .await;
    assert!(
        message.contains("1 endpoint(s) skipped (address_not_pod_ip)"),
        "{message}"
    );
    let text = ctl.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l == r#"meridian_catalog_skipped_endpoints{reason="address_not_pod_ip"} 1"#),
        "{text}"
    );
    ctl.kill().await;
}

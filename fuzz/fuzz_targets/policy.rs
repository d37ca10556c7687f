//! Policy parsing and validation: a `GlobalTrafficPolicy` spec as the API server hands it
//! to the controller (JSON), judged by the controller (`policy::desired_status`,
//! `policy::in_force`, i.e. `TrafficPolicy::validate`), then, when accepted, carried in a
//! snapshot as the controller writes it (`policy_json`) and used by a gateway: parsed and
//! validated again by `RoutingTable::build`, routed by `ServiceRoutes` and balanced by the
//! locality engine for several callers.
//!
//! Input: the spec's JSON (`{"service": "...", "localityLbSetting": ...}`).
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meridian_api::Locality;
use meridian_api::policy::StringMatch;
use meridian_api::proto::{self, GlobalService, Protocol, ServicePort, Snapshot};
use meridian_api::split::Caller;
use meridian_controller::crd::{GlobalTrafficPolicy, GlobalTrafficPolicySpec};
use meridian_controller::policy;
use meridian_gateway::route::ServiceRoutes;
use meridian_gateway::routing::RoutingTable;
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// (cluster, region/zone/subzone, address, version label).
const ENDPOINTS: [(&str, &str, &str, &str); 6] = [
    ("east", "us-east1/us-east1-a/rack1", "10.1.0.1", "v1"),
    ("east", "us-east1/us-east1-b/rack2", "10.1.0.2", "v2"),
    ("west", "us-west1/us-west1-a/rack1", "10.2.0.1", "v1"),
    ("west", "us-west1/us-west1-a/rack2", "10.2.0.2", "v3"),
    ("north", "eu-north1/eu-north1-a/rack1", "10.3.0.1", "v2"),
    ("north", "eu-north1/eu-north1-b/rack1", "10.3.0.2", "v1"),
];

fn locality(text: &str) -> Locality {
    text.parse().expect("a valid locality")
}

/// The service as the controller would publish it with this policy.
fn snapshot(policy_json: String) -> Snapshot {
    let endpoints = ENDPOINTS
        .iter()
        .map(|(cluster, at, address, version)| {
            let l = locality(at);
            proto::Endpoint {
                cluster: (*cluster).into(),
                address: (*address).into(),
                ports: [("http".to_string(), 8080)].into(),
                locality: Some(proto::Locality {
                    region: l.region,
                    zone: l.zone,
                    subzone: l.subzone,
                }),
                labels: [
                    ("version".to_string(), (*version).to_string()),
                    ("tier".to_string(), (*cluster).to_string()),
                ]
                .into(),
                ready: true,
                ..Default::default()
            }
        })
        .collect();
    Snapshot {
        cluster: "east".into(),
        services: vec![GlobalService {
            name: "reviews".into(),
            namespace: "demo".into(),
            hostname: "reviews.demo.global".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: Protocol::Http as i32,
                listener_port: 20001,
            }],
            endpoints,
            policy_json,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Requests that hit each match of the policy (where names and values can be headers),
/// and one with no headers.
fn requests(spec: &GlobalTrafficPolicySpec) -> Vec<HeaderMap> {
    let mut out = vec![HeaderMap::new()];
    for m in spec.policy.http.iter().flat_map(|r| &r.matches).take(8) {
        let mut headers = HeaderMap::new();
        for (name, want) in &m.headers {
            let value = match want {
                StringMatch::Exact(v) => v.clone(),
                StringMatch::Prefix(p) => format!("{p}x"),
            };
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(n, v);
            }
        }
        out.push(headers);
    }
    out
}

fn callers() -> Vec<Caller> {
    let mut out = vec![Caller::default()];
    for (cluster, at, _, version) in &ENDPOINTS[..4] {
        out.push(Caller {
            locality: locality(at),
            labels: BTreeMap::from([
                ("version".to_string(), (*version).to_string()),
                ("tier".to_string(), (*cluster).to_string()),
            ]),
        });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<GlobalTrafficPolicySpec>(data) else {
        return;
    };
    let mut gtp = GlobalTrafficPolicy::new("fuzz", spec);
    gtp.metadata.namespace = Some("demo".into());
    gtp.metadata.generation = Some(1);
    let gtp = Arc::new(gtp);
    let all = [gtp.clone()];

    // The controller's verdict, status and policy in force.
    let accepted = gtp.spec.policy.validate().is_ok();
    let status = policy::desired_status(&gtp, &all);
    serde_json::to_vec(&status).expect("the status is patched as JSON");
    assert_eq!(policy::in_force(&all).len(), usize::from(accepted));
    if !accepted {
        return;
    }

    // The gateway of `east`, given the policy as the controller publishes it.
    let policy_json = serde_json::to_string(&gtp.spec.policy).expect("a policy serializes");
    let table = RoutingTable::build("east", Arc::new(snapshot(policy_json)));
    let service = &table.services["reviews.demo.global"];
    assert_eq!(
        service.policy_error, None,
        "the gateway refused a policy the controller accepted"
    );
    assert_eq!(service.policy, gtp.spec.policy);

    let mut rng = SmallRng::seed_from_u64(0);
    let requests = requests(&gtp.spec);
    let health = [
        vec![true; ENDPOINTS.len()],
        vec![false, true, false, true, true, false],
    ];
    for caller in callers() {
        for healthy in &health {
            let routes = ServiceRoutes::build(service.clone(), &caller, healthy.clone());
            for headers in &requests {
                let choice = routes.destination_for(Some(headers), &mut rng);
                assert!(choice.destination < routes.destinations.len());
                let mut tried = Vec::new();
                for _ in 0..3 {
                    if let Some(ep) = routes.pick(choice.destination, &mut rng, &tried) {
                        assert!(ep < service.endpoints.len());
                        tried.push(ep);
                    }
                }
            }
        }
    }
});

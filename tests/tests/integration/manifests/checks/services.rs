//! Services.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployments::container_port;
use super::{GATEWAY_SELECTOR, GATEWAY_SERVICE, Objects, name};

/// Services: selectors hit a Deployment, target ports exist, the gateway and controller
/// Services are what the binaries' defaults expect.
pub(crate) fn services(objects: &Objects, problems: &mut Vec<String>) {
    let by_name: BTreeMap<&str, &Service> = objects.services.iter().map(|s| (name(s), s)).collect();
    for svc in &objects.services {
        let owner = format!("Service {}", name(svc));
        let Some(spec) = &svc.spec else {
            problems.push(format!("{owner}: no spec"));
            continue;
        };
        let selector = spec.selector.clone().unwrap_or_default();
        let targets: Vec<&Deployment> = objects
            .deployments
            .iter()
            .filter(|d| {
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.as_ref());
                !selector.is_empty()
                    && selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect();
        let [target] = targets.as_slice() else {
            problems.push(format!(
                "{owner}: selector {selector:?} matches {} Deployments, want 1",
                targets.len()
            ));
            continue;
        };
        let containers = target
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.clone())
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let tp = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            let found = containers
                .iter()
                .filter_map(|c| container_port(c, &tp))
                .find(|cp| {
                    cp.protocol.as_deref().unwrap_or("TCP")
                        == port.protocol.as_deref().unwrap_or("TCP")
                });
            if found.is_none() {
                problems.push(format!(
                    "{owner}: port {:?} targets {tp:?}, not a container port of {}",
                    port.name,
                    name(*target)
                ));
            }
            if port.name.as_deref().is_none_or(str::is_empty) {
                problems.push(format!("{owner}: unnamed port {}", port.port));
            }
        }
    }
    match by_name.get(GATEWAY_SERVICE).and_then(|s| s.spec.as_ref()) {
        Some(spec) => {
            if spec.type_.as_deref() != Some("LoadBalancer") {
                problems.push(format!(
                    "Service {GATEWAY_SERVICE}: type is not LoadBalancer"
                ));
            }
            let tunnel = spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("tunnel"));
            if tunnel.map(|p| p.port) != Some(15008) {
                problems.push(format!("Service {GATEWAY_SERVICE}: no port `tunnel` 15008 (the controller reads that name)"));
            }
            if spec
                .selector
                .as_ref()
                .and_then(|s| s.get(GATEWAY_SELECTOR.0))
                .map(String::as_str)
                != Some(GATEWAY_SELECTOR.1)
            {
                problems.push(format!(
                    "Service {GATEWAY_SERVICE}: does not select {GATEWAY_SELECTOR:?}"
                ));
            }
        }
        None => problems.push(format!(
            "Service {GATEWAY_SERVICE} missing (the controller's --gateway-service)"
        )),
    }
    match by_name
        .get("meridian-controller")
        .and_then(|s| s.spec.as_ref())
    {
        Some(spec) if spec.ports.iter().flatten().any(|p| p.port == 15010) => {}
        _ => problems.push(
            "Service meridian-controller with gRPC port 15010 missing (gateway and DNS dial it)"
                .into(),
        ),
    }
    // The VIP Services the controller creates select gateway pods by its default selector.
    let gw_labels = objects
        .deployments
        .iter()
        .find(|d| name(*d) == "meridian-gateway")
        .and_then(|d| d.spec.as_ref()?.template.metadata.as_ref()?.labels.clone())
        .unwrap_or_default();
    if gw_labels.get(GATEWAY_SELECTOR.0).map(String::as_str) != Some(GATEWAY_SELECTOR.1) {
        problems.push(format!(
            "gateway pods lack the controller's selector {GATEWAY_SELECTOR:?}"
        ));
    }
    // Every controller URL a component is configured with names the controller Service.
    for d in &objects.deployments {
        for c in d
            .spec
            .iter()
            .flat_map(|s| s.template.spec.iter())
            .flat_map(|p| &p.containers)
        {
            let urls = c
                .args
                .iter()
                .flatten()
                .filter_map(|a| a.strip_prefix("--controller=").map(str::to_owned))
                .chain(
                    c.env
                        .iter()
                        .flatten()
                        .filter(|e| e.name == "MERIDIAN_CONTROLLER")
                        .filter_map(|e| e.value.clone()),
                );
            for url in urls {
                // TLS: the serving certificate carries the `.svc` name.
                let ok = url == "https://meridian-controller.meridian-system.svc:15010";
                if !ok {
                    problems.push(format!("Deployment {}: controller URL {url:?} is not the meridian-controller Service", name(d)));
                }
            }
        }
    }
}

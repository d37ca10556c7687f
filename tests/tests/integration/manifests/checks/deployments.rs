//! Deployments and their pods.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLUSTER_CONFIGMAP, COMPONENTS, CONTROLLER_SA, Objects, name};

pub(crate) fn container_port<'a>(
    c: &'a Container,
    port: &IntOrString,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerPort> {
    c.ports.iter().flatten().find(|p| match port {
        IntOrString::Int(n) => p.container_port == *n,
        IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
    })
}

fn env_from_configmap(c: &Container, var: &str) -> bool {
    c.env.iter().flatten().any(|e| {
        e.name == var
            && e.value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
                .is_some_and(|r| {
                    r.name == CLUSTER_CONFIGMAP && r.key == "name" && r.optional != Some(true)
                })
    })
}

fn pod_problems(owner: &str, spec: &PodSpec, problems: &mut Vec<String>) {
    let sc = spec.security_context.clone().unwrap_or_default();
    if sc.run_as_non_root != Some(true) {
        problems.push(format!("{owner}: pod runAsNonRoot is not true"));
    }
    if sc.run_as_user.is_none_or(|u| u == 0) {
        problems.push(format!("{owner}: pod runAsUser unset or 0"));
    }
    if sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()) != Some("RuntimeDefault") {
        problems.push(format!("{owner}: seccompProfile is not RuntimeDefault"));
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        problems.push(format!("{owner}: host namespaces"));
    }
    if spec.volumes.iter().flatten().any(|v| v.host_path.is_some()) {
        problems.push(format!("{owner}: hostPath volume"));
    }
}

fn probe_port(
    c: &Container,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
) -> Option<IntOrString> {
    let p = probe?;
    p.http_get
        .as_ref()
        .map(|h| h.port.clone())
        .or_else(|| p.tcp_socket.as_ref().map(|t| t.port.clone()))
        .filter(|port| container_port(c, port).is_some())
}

/// Deployments: images, commands, security, resources, probes, metrics annotations,
/// the cluster name from the ConfigMap, API access only for the controller.
pub(crate) fn deployments(objects: &Objects, problems: &mut Vec<String>) {
    let names: BTreeSet<&str> = objects.deployments.iter().map(name).collect();
    let want: BTreeSet<&str> = COMPONENTS.iter().map(|c| c.0).collect();
    if names != want {
        problems.push(format!("Deployments {names:?}, want {want:?}"));
    }
    for d in &objects.deployments {
        let dname = name(d);
        let owner = format!("Deployment {dname}");
        let Some((_, binary, cluster_env)) = COMPONENTS.iter().find(|c| c.0 == dname) else {
            continue;
        };
        let Some(spec) = &d.spec else {
            problems.push(format!("{owner}: no spec"));
            continue;
        };
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        if selector.is_empty()
            || selector
                .iter()
                .any(|(k, v)| template_labels.get(k) != Some(v))
        {
            problems.push(format!(
                "{owner}: selector {selector:?} does not match the pod labels"
            ));
        }
        let Some(pod) = &spec.template.spec else {
            problems.push(format!("{owner}: no pod spec"));
            continue;
        };
        pod_problems(&owner, pod, problems);
        let is_controller = dname == "meridian-controller";
        if is_controller {
            if pod.service_account_name.as_deref() != Some(CONTROLLER_SA) {
                problems.push(format!(
                    "{owner}: serviceAccountName is not {CONTROLLER_SA}"
                ));
            }
        } else {
            if pod.automount_service_account_token != Some(false) {
                problems.push(format!(
                    "{owner}: automountServiceAccountToken is not false"
                ));
            }
            let sa = pod.service_account_name.as_deref().unwrap_or("default");
            match objects.service_accounts.iter().find(|s| name(*s) == sa) {
                Some(s) if s.automount_service_account_token == Some(false) => {}
                Some(_) => {
                    problems.push(format!("{owner}: ServiceAccount {sa} automounts its token"))
                }
                None => problems.push(format!("{owner}: ServiceAccount {sa} is not in the base")),
            }
        }
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        let scrape_port = annotations
            .get("prometheus.io/port")
            .and_then(|p| p.parse::<i32>().ok());
        if annotations.get("prometheus.io/scrape").map(String::as_str) != Some("true")
            || annotations.get("prometheus.io/path").map(String::as_str) != Some("/metrics")
        {
            problems.push(format!(
                "{owner}: prometheus.io/scrape and /path annotations missing"
            ));
        }
        if pod.containers.len() != 1 {
            problems.push(format!(
                "{owner}: {} containers, want 1",
                pod.containers.len()
            ));
        }
        for c in &pod.containers {
            let owner = format!("{owner} container {}", c.name);
            if c.image.as_deref() != Some("meridian:dev") {
                problems.push(format!(
                    "{owner}: image {:?}, want the one image meridian:dev",
                    c.image
                ));
            }
            if c.image_pull_policy.as_deref() != Some("IfNotPresent") {
                problems.push(format!("{owner}: imagePullPolicy is not IfNotPresent"));
            }
            let want_cmd = format!("/usr/local/bin/{binary}");
            if c.command.as_ref().and_then(|c| c.first()) != Some(&want_cmd) {
                problems.push(format!(
                    "{owner}: command {:?}, want [{want_cmd}]",
                    c.command
                ));
            }
            if !env_from_configmap(c, cluster_env) {
                problems.push(format!(
                    "{owner}: {cluster_env} must come from ConfigMap {CLUSTER_CONFIGMAP} key name"
                ));
            }
            let sc = c.security_context.clone().unwrap_or_default();
            if sc.allow_privilege_escalation != Some(false) {
                problems.push(format!("{owner}: allowPrivilegeEscalation is not false"));
            }
            if sc.read_only_root_filesystem != Some(true) {
                problems.push(format!("{owner}: readOnlyRootFilesystem is not true"));
            }
            if sc.privileged == Some(true) {
                problems.push(format!("{owner}: privileged"));
            }
            let caps = sc.capabilities.unwrap_or_default();
            if !caps.drop.iter().flatten().any(|c| c == "ALL")
                || caps.add.is_some_and(|a| !a.is_empty())
            {
                problems.push(format!("{owner}: capabilities must drop ALL and add none"));
            }
            let requests = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            for r in ["cpu", "memory"] {
                if !requests.contains_key(r) {
                    problems.push(format!("{owner}: no {r} request"));
                }
            }
            for (what, probe) in [
                ("readiness", c.readiness_probe.as_ref()),
                ("liveness", c.liveness_probe.as_ref()),
            ] {
                if probe_port(c, probe).is_none() {
                    problems.push(format!("{owner}: no {what} probe on a declared port"));
                }
            }
            if scrape_port.is_none_or(|p| container_port(c, &IntOrString::Int(p)).is_none()) {
                problems.push(format!(
                    "{owner}: prometheus.io/port {scrape_port:?} is not a container port"
                ));
            }
        }
    }
}

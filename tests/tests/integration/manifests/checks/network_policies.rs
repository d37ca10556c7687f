//! NetworkPolicies.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployments::container_port;
use super::{Objects, name};

/// The namespace label that admits monitoring (Prometheus) to admin and metrics ports.
pub(crate) const MONITORING_LABEL: (&str, &str) = ("meridian.io/monitoring", "true");
/// The controller's default `--listener-ports`: the gateway's outbound listeners.
pub(crate) const LISTENER_PORTS: (i32, i32) = (15100, 15999);

/// Who may reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sources {
    /// No `from`: anywhere, inside the cluster or not.
    Anywhere,
    /// Every pod of the cluster (`namespaceSelector: {}`).
    Cluster,
    /// Pods of meridian-system with these `app.kubernetes.io/name`s.
    Pods(&'static [&'static str]),
    /// Namespaces labelled [`MONITORING_LABEL`].
    Monitoring,
}

/// (Deployment, container port name, the flag that sets the port and its default,
/// who may reach it).
pub(crate) const PORTS: [(&str, &str, &str, i32, Sources); 8] = [
    (
        "meridian-controller",
        "grpc",
        "--grpc-addr",
        15010,
        Sources::Pods(&["meridian-gateway", "meridian-dns"]),
    ),
    (
        "meridian-controller",
        "http-metrics",
        "--metrics-addr",
        15014,
        Sources::Monitoring,
    ),
    (
        "meridian-gateway",
        "tunnel",
        "--tunnel-addr",
        15008,
        Sources::Anywhere,
    ),
    (
        "meridian-gateway",
        "admin",
        "--admin-addr",
        15021,
        Sources::Monitoring,
    ),
    ("meridian-dns", "dns", "--listen", 53, Sources::Cluster),
    ("meridian-dns", "dns-tcp", "--listen", 53, Sources::Cluster),
    (
        "meridian-dns",
        "admin",
        "--admin",
        15053,
        Sources::Monitoring,
    ),
    // Not a container port: the listener range, checked separately.
    (
        "meridian-gateway",
        "listeners",
        "",
        LISTENER_PORTS.0,
        Sources::Cluster,
    ),
];

fn sources(from: &Option<Vec<NetworkPolicyPeer>>) -> Option<Sources> {
    let Some(from) = from else {
        return Some(Sources::Anywhere);
    };
    let labels = |sel: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        sel.as_ref().map(|s| {
            (
                s.match_labels.clone().unwrap_or_default(),
                s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()),
            )
        })
    };
    let mut pods: Vec<String> = Vec::new();
    for (i, peer) in from.iter().enumerate() {
        if peer.ip_block.is_some() {
            return None;
        }
        match (labels(&peer.namespace_selector), labels(&peer.pod_selector)) {
            (Some((ns, false)), None) if ns.is_empty() && from.len() == 1 => {
                return Some(Sources::Cluster);
            }
            (Some((ns, false)), None)
                if from.len() == 1
                    && ns.len() == 1
                    && ns.get(MONITORING_LABEL.0).map(String::as_str)
                        == Some(MONITORING_LABEL.1) =>
            {
                return Some(Sources::Monitoring);
            }
            (None, Some((p, false))) if p.len() == 1 => {
                pods.extend(p.get("app.kubernetes.io/name").cloned());
                if pods.len() != i + 1 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    let known: &[&[&str]] = &[&["meridian-gateway", "meridian-dns"]];
    known
        .iter()
        .find(|k| k.len() == pods.len() && k.iter().all(|n| pods.iter().any(|p| p == n)))
        .map(|k| Sources::Pods(k))
}

/// The port a flag sets: `--flag=host:port` in the container's args, else `default`.
fn flag_port(c: &Container, flag: &str, default: i32) -> i32 {
    c.args
        .iter()
        .flatten()
        .filter_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
        .filter_map(|v| v.rsplit_once(':')?.1.parse().ok())
        .next_back()
        .unwrap_or(default)
}

/// NetworkPolicies: every component is selected by one, every port a rule names is a
/// container port (set by the flag the binary listens with), every container port is
/// admitted, and each from exactly the sources in [`PORTS`].
pub(crate) fn network_policies(objects: &Objects, problems: &mut Vec<String>) {
    for d in &objects.deployments {
        let dname = name(d);
        let Some(template) = d.spec.as_ref().map(|s| &s.template) else {
            continue;
        };
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let containers = template
            .spec
            .as_ref()
            .map(|p| p.containers.clone())
            .unwrap_or_default();
        let selecting: Vec<&NetworkPolicy> = objects
            .network_policies
            .iter()
            .filter(|np| {
                np.spec.as_ref().is_some_and(|s| {
                    let sel = s
                        .pod_selector
                        .as_ref()
                        .and_then(|p| p.match_labels.clone())
                        .unwrap_or_default();
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
            })
            .collect();
        let [np] = selecting.as_slice() else {
            problems.push(format!(
                "Deployment {dname}: selected by {} NetworkPolicies, want 1",
                selecting.len()
            ));
            continue;
        };
        let owner = format!("NetworkPolicy {}", name(*np));
        let spec = np.spec.clone().unwrap_or_default();
        if !spec.policy_types.iter().flatten().any(|t| t == "Ingress") {
            problems.push(format!("{owner}: policyTypes lacks Ingress"));
        }
        // (port name or "listeners", protocol) → who is admitted.
        let mut admitted: Vec<(String, String, Option<Sources>)> = Vec::new();
        for rule in spec.ingress.iter().flatten() {
            let who = sources(&rule.from);
            let ports = rule.ports.clone().unwrap_or_default();
            if ports.is_empty() {
                problems.push(format!("{owner}: a rule admits every port"));
            }
            for p in ports {
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let Some(port) = &p.port else {
                    problems.push(format!("{owner}: a rule admits every port"));
                    continue;
                };
                if let Some(end) = p.end_port {
                    if *port != IntOrString::Int(LISTENER_PORTS.0) || end != LISTENER_PORTS.1 {
                        problems.push(format!(
                                "{owner}: range {port:?}-{end} is not the listener range {LISTENER_PORTS:?}"
                            ));
                    }
                    admitted.push(("listeners".into(), protocol, who));
                    continue;
                }
                match containers.iter().find_map(|c| container_port(c, port)) {
                    Some(cp) if cp.protocol.as_deref().unwrap_or("TCP") == protocol => {
                        admitted.push((cp.name.clone().unwrap_or_default(), protocol, who));
                    }
                    _ => problems.push(format!(
                        "{owner}: port {port:?}/{protocol} is not a container port of {dname}"
                    )),
                }
            }
        }
        for (deployment, port_name, flag, default, want) in PORTS {
            if deployment != dname {
                continue;
            }
            let got: Vec<Option<Sources>> = admitted
                .iter()
                .filter(|(n, _, _)| n == port_name)
                .map(|(_, _, w)| *w)
                .collect();
            if got != [Some(want)] {
                problems.push(format!(
                    "{owner}: port {port_name} admitted from {got:?}, want exactly {want:?}"
                ));
            }
            if flag.is_empty() {
                continue;
            }
            for c in &containers {
                let Some(cp) = container_port(c, &IntOrString::String(port_name.into())) else {
                    problems.push(format!(
                        "{owner}: {dname} has no container port {port_name}"
                    ));
                    continue;
                };
                // DNS listens on 5353 in the pod; 53 is the Service's port.
                let listens = flag_port(c, flag, default);
                if cp.container_port != listens {
                    problems.push(format!(
                            "Deployment {dname}: container port {port_name} is {} but {flag} listens on {listens}",
                            cp.container_port
                        ));
                }
            }
        }
        for c in &containers {
            for cp in c.ports.iter().flatten() {
                let n = cp.name.clone().unwrap_or_default();
                if !admitted.iter().any(|(a, _, _)| *a == n) {
                    problems.push(format!(
                        "{owner}: container port {n} ({}) of {dname} is not admitted",
                        cp.container_port
                    ));
                }
            }
        }
    }
}

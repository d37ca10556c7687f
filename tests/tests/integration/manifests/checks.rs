//! Object checks, as pure functions from rendered documents to a list of problems, so
//! they can be shown to catch bad input as well as to pass good input.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where Meridian runs.
pub(super) const NAMESPACE: &str = "meridian-system";
/// The controller's ServiceAccount, the only identity with API rights.
pub(super) const CONTROLLER_SA: &str = "meridian-controller";
/// The per-cluster ConfigMap every component reads the cluster name from.
pub(super) const CLUSTER_CONFIGMAP: &str = "meridian-cluster";
/// The controller's default `--gateway-selector`.
pub(super) const GATEWAY_SELECTOR: (&str, &str) = ("app.kubernetes.io/name", "meridian-gateway");
/// The controller's default `--gateway-service`.
pub(super) const GATEWAY_SERVICE: &str = "meridian-gateway";

/// Deployment name → (binary, env var naming the cluster, admin port name).
pub(super) const COMPONENTS: [(&str, &str, &str); 3] = [
    (
        "meridian-controller",
        "meridian-controller",
        "MERIDIAN_CLUSTER_NAME",
    ),
    (
        "meridian-gateway",
        "meridian-gateway",
        "MERIDIAN_CLUSTER_NAME",
    ),
    ("meridian-dns", "meridian-dns", "MERIDIAN_CLUSTER_NAME"),
];

const READ: [&str; 3] = ["get", "list", "watch"];
const DANGEROUS_VERBS: [&str; 3] = ["escalate", "bind", "impersonate"];

/// The rendered objects, typed.
#[derive(Default)]
pub(super) struct Objects {
    pub namespaces: Vec<Namespace>,
    pub crds: Vec<CustomResourceDefinition>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub config_maps: Vec<ConfigMap>,
    pub network_policies: Vec<NetworkPolicy>,
}

/// Fields of `original` that did not survive a round trip through the typed object:
/// misspelt or misplaced fields the typed parser silently drops.
fn unknown_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                unknown_fields(ov, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<K: DeserializeOwned + serde::Serialize>(
    doc: &Value,
    id: &str,
    problems: &mut Vec<String>,
) -> Option<K> {
    match serde_json::from_value::<K>(doc.clone()) {
        Ok(k) => {
            let back = serde_json::to_value(&k).expect("typed objects serialize");
            let mut unknown = Vec::new();
            unknown_fields(doc, &back, "", &mut unknown);
            for f in unknown {
                problems.push(format!("{id}: unknown field {f}"));
            }
            Some(k)
        }
        Err(e) => {
            problems.push(format!("{id}: does not parse as its kind: {e}"));
            None
        }
    }
}

/// `Kind namespace/name` of a raw document.
pub(super) fn id(doc: &Value) -> String {
    let s = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} {}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// Parses every document into its type; checks apiVersion, names and namespaces.
pub(super) fn parse(docs: &[Value], problems: &mut Vec<String>) -> Objects {
    let mut objects = Objects::default();
    let mut seen = BTreeSet::new();
    for doc in docs {
        let id = id(doc);
        if !seen.insert(id.clone()) {
            problems.push(format!("{id}: duplicate object"));
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or("");
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = doc.pointer("/metadata/name").and_then(Value::as_str);
        let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            problems.push(format!("{id}: no metadata.name"));
        }
        let (want_api, namespaced) = match kind {
            "Namespace" => ("v1", false),
            "CustomResourceDefinition" => ("apiextensions.k8s.io/v1", false),
            "ClusterRole" | "ClusterRoleBinding" => ("rbac.authorization.k8s.io/v1", false),
            "Role" | "RoleBinding" => ("rbac.authorization.k8s.io/v1", true),
            "ServiceAccount" | "Service" | "ConfigMap" => ("v1", true),
            "Deployment" => ("apps/v1", true),
            "NetworkPolicy" => ("networking.k8s.io/v1", true),
            other => {
                problems.push(format!(
                    "{id}: unexpected kind {other:?} (PodDisruptionBudget policy/v1 and \
                         ServiceMonitor are deliberately not in the base)"
                ));
                continue;
            }
        };
        if api_version != want_api {
            problems.push(format!(
                "{id}: apiVersion {api_version:?}, want {want_api:?}"
            ));
        }
        match (namespaced, namespace) {
            (true, Some(NAMESPACE)) | (false, None) => {}
            (true, other) => {
                problems.push(format!("{id}: namespace {other:?}, want {NAMESPACE:?}"))
            }
            (false, Some(ns)) => {
                problems.push(format!("{id}: cluster-scoped but has namespace {ns:?}"))
            }
        }
        if kind != "CustomResourceDefinition"
            && doc.pointer("/metadata/labels/app.kubernetes.io~1part-of")
                != Some(&Value::from("meridian"))
        {
            problems.push(format!(
                "{id}: label app.kubernetes.io/part-of=meridian missing"
            ));
        }
        let p = &mut *problems;
        match kind {
            "Namespace" => objects.namespaces.extend(typed(doc, &id, p)),
            "CustomResourceDefinition" => objects.crds.extend(typed(doc, &id, p)),
            "ServiceAccount" => objects.service_accounts.extend(typed(doc, &id, p)),
            "ClusterRole" => objects.cluster_roles.extend(typed(doc, &id, p)),
            "ClusterRoleBinding" => objects.cluster_role_bindings.extend(typed(doc, &id, p)),
            "Role" => objects.roles.extend(typed(doc, &id, p)),
            "RoleBinding" => objects.role_bindings.extend(typed(doc, &id, p)),
            "Service" => objects.services.extend(typed(doc, &id, p)),
            "Deployment" => objects.deployments.extend(typed(doc, &id, p)),
            "ConfigMap" => objects.config_maps.extend(typed(doc, &id, p)),
            "NetworkPolicy" => objects.network_policies.extend(typed(doc, &id, p)),
            _ => unreachable!("filtered above"),
        }
    }
    objects
}

fn name<
    K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    k: &K,
) -> &str {
    k.metadata().name.as_deref().unwrap_or("")
}

/// A rule's verbs/resources/groups, as string sets.
fn set(v: &Option<Vec<String>>) -> BTreeSet<&str> {
    v.iter().flatten().map(String::as_str).collect()
}

fn rule_problems(owner: &str, rule: &PolicyRule, cluster_wide: bool, problems: &mut Vec<String>) {
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    let resources = set(&rule.resources);
    let groups = set(&rule.api_groups);
    for field in [&verbs, &resources, &groups] {
        if field.contains("*") {
            problems.push(format!("{owner}: wildcard in rule {rule:?}"));
        }
    }
    if rule.non_resource_urls.is_some() {
        problems.push(format!("{owner}: nonResourceURLs granted"));
    }
    if resources.is_empty() || verbs.is_empty() {
        problems.push(format!("{owner}: rule without resources or verbs"));
    }
    for v in DANGEROUS_VERBS {
        if verbs.contains(v) {
            problems.push(format!("{owner}: verb {v:?} granted"));
        }
    }
    if cluster_wide && resources.iter().any(|r| r.starts_with("secrets")) {
        problems.push(format!(
            "{owner}: Secrets granted cluster-wide (only allowed in {NAMESPACE})"
        ));
    }
    let writes = verbs.iter().any(|v| !READ.contains(v));
    if cluster_wide && writes {
        // Cluster-wide writes only to Meridian's own resources, plus creating
        // TokenReviews (a question to the API server that changes nothing).
        let token_review = groups.iter().all(|g| *g == "authentication.k8s.io")
            && resources.iter().all(|r| *r == "tokenreviews")
            && verbs.iter().all(|v| *v == "create");
        let own = groups.iter().all(|g| *g == "meridian.io") || token_review;
        if !own {
            problems.push(format!(
                "{owner}: cluster-wide write verbs {verbs:?} on {groups:?}/{resources:?}"
            ));
        }
        if groups.contains("meridian.io") && resources.contains("globaltrafficpolicies") && writes {
            problems.push(format!(
                "{owner}: may write users' GlobalTrafficPolicy specs"
            ));
        }
    }
}

/// Least privilege: wildcards, Secrets, write scope, bindings and who is bound.
pub(super) fn rbac(objects: &Objects, problems: &mut Vec<String>) {
    for cr in &objects.cluster_roles {
        let owner = format!("ClusterRole {}", name(cr));
        if cr.aggregation_rule.is_some() {
            problems.push(format!("{owner}: aggregation rule"));
        }
        for rule in cr.rules.iter().flatten() {
            rule_problems(&owner, rule, true, problems);
        }
    }
    for role in &objects.roles {
        let owner = format!("Role {}", name(role));
        for rule in role.rules.iter().flatten() {
            rule_problems(&owner, rule, false, problems);
        }
    }
    let sas: BTreeSet<&str> = objects.service_accounts.iter().map(name).collect();
    let mut bound = BTreeSet::new();
    let mut subjects = |owner: &str, subs: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        for s in subs.iter().flatten() {
            if s.kind != "ServiceAccount" || s.namespace.as_deref() != Some(NAMESPACE) {
                problems.push(format!(
                    "{owner}: subject {s:?} is not a {NAMESPACE} ServiceAccount"
                ));
            } else if !sas.contains(s.name.as_str()) {
                problems.push(format!(
                    "{owner}: ServiceAccount {} is not in the base",
                    s.name
                ));
            } else {
                bound.insert(s.name.clone());
            }
        }
    };
    let cluster_roles: BTreeSet<&str> = objects.cluster_roles.iter().map(name).collect();
    let roles: BTreeSet<&str> = objects.roles.iter().map(name).collect();
    let mut refs = Vec::new();
    for b in &objects.cluster_role_bindings {
        let owner = format!("ClusterRoleBinding {}", name(b));
        subjects(&owner, &b.subjects);
        if b.role_ref.kind != "ClusterRole" || !cluster_roles.contains(b.role_ref.name.as_str()) {
            refs.push(format!(
                "{owner}: roleRef {:?} is not a ClusterRole of the base",
                b.role_ref
            ));
        }
    }
    for b in &objects.role_bindings {
        let owner = format!("RoleBinding {}", name(b));
        subjects(&owner, &b.subjects);
        // A RoleBinding to a ClusterRole would grant it in meridian-system only, but the
        // base has no reason to do that: keep roles and bindings paired.
        if b.role_ref.kind != "Role" || !roles.contains(b.role_ref.name.as_str()) {
            refs.push(format!(
                "{owner}: roleRef {:?} is not a Role of the base",
                b.role_ref
            ));
        }
    }
    problems.extend(refs);
    if bound != BTreeSet::from([CONTROLLER_SA.to_owned()]) {
        problems.push(format!(
            "only {CONTROLLER_SA} may be bound to roles (the gateway and DNS need no API \
                 access), bound: {bound:?}"
        ));
    }
    // Completeness: what the controller's watches need, cluster-wide.
    let granted = |group: &str, resource: &str, verb: &str| {
        objects
            .cluster_roles
            .iter()
            .flat_map(|r| r.rules.iter().flatten())
            .any(|r| {
                set(&r.api_groups).contains(group)
                    && set(&r.resources).contains(resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
    };
    for (group, resource) in [
        ("", "services"),
        ("", "endpoints"),
        ("", "nodes"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("meridian.io", "globaltrafficpolicies"),
        ("meridian.io", "globalservices"),
        ("meridian.io", "memberclusters"),
    ] {
        for verb in READ {
            if !granted(group, resource, verb) {
                problems.push(format!("the controller cannot {verb} {group}/{resource}"));
            }
        }
    }
}

fn container_port<'a>(
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
pub(super) fn deployments(objects: &Objects, problems: &mut Vec<String>) {
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

/// Services: selectors hit a Deployment, target ports exist, the gateway and controller
/// Services are what the binaries' defaults expect.
pub(super) fn services(objects: &Objects, problems: &mut Vec<String>) {
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

/// The namespace label that admits monitoring (Prometheus) to admin and metrics ports.
pub(super) const MONITORING_LABEL: (&str, &str) = ("meridian.io/monitoring", "true");
/// The controller's default `--listener-ports`: the gateway's outbound listeners.
pub(super) const LISTENER_PORTS: (i32, i32) = (15100, 15999);

/// Who may reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sources {
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
pub(super) const PORTS: [(&str, &str, &str, i32, Sources); 8] = [
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
pub(super) fn network_policies(objects: &Objects, problems: &mut Vec<String>) {
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

/// The audience of the tokens gateway and DNS send the controller (its --token-audience).
pub(super) const CONTROLLER_AUDIENCE: &str = "meridian-controller";

/// Gateway and DNS send the controller a projected token for its audience, from the
/// file their --token-file (MERIDIAN_TOKEN_FILE) names.
pub(super) fn controller_tokens(objects: &Objects, problems: &mut Vec<String>) {
    for d in &objects.deployments {
        let dname = name(d);
        if dname == "meridian-controller" {
            continue;
        }
        let owner = format!("Deployment {dname}");
        let Some(pod) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            continue;
        };
        // volume name → token path inside it.
        let tokens: BTreeMap<&str, &str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let sources = v.projected.as_ref()?.sources.as_ref()?;
                sources.iter().find_map(|s| {
                    let t = s.service_account_token.as_ref()?;
                    (t.audience.as_deref() == Some(CONTROLLER_AUDIENCE)
                        && t.expiration_seconds.is_some())
                    .then_some((v.name.as_str(), t.path.as_str()))
                })
            })
            .collect();
        for c in &pod.containers {
            let files: BTreeSet<String> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|m| {
                    let path = tokens.get(m.name.as_str())?;
                    Some(format!("{}/{path}", m.mount_path.trim_end_matches('/')))
                })
                .collect();
            let configured: Vec<String> = c
                .args
                .iter()
                .flatten()
                .filter_map(|a| a.strip_prefix("--token-file=").map(str::to_owned))
                .chain(
                    c.env
                        .iter()
                        .flatten()
                        .filter(|e| e.name == "MERIDIAN_TOKEN_FILE")
                        .filter_map(|e| e.value.clone()),
                )
                .collect();
            if configured.is_empty() || !configured.iter().all(|f| files.contains(f)) {
                problems.push(format!(
                    "{owner}: --token-file {configured:?} is not a mounted projected token \
                         with audience {CONTROLLER_AUDIENCE} and expirationSeconds ({files:?})"
                ));
            }
        }
    }
}

/// Everything, in one list.
pub(super) fn all(docs: &[Value]) -> (Objects, Vec<String>) {
    let mut problems = Vec::new();
    let objects = parse(docs, &mut problems);
    if objects.namespaces.iter().map(name).collect::<Vec<_>>() != [NAMESPACE] {
        problems.push(format!(
            "the base must create exactly the {NAMESPACE} Namespace"
        ));
    }
    rbac(&objects, &mut problems);
    deployments(&objects, &mut problems);
    services(&objects, &mut problems);
    network_policies(&objects, &mut problems);
    controller_tokens(&objects, &mut problems);
    (objects, problems)
}

//! Least-privilege RBAC.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::{CONTROLLER_SA, NAMESPACE, Objects, name};

const READ: [&str; 3] = ["get", "list", "watch"];
const DANGEROUS_VERBS: [&str; 3] = ["escalate", "bind", "impersonate"];

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
pub(crate) fn rbac(objects: &Objects, problems: &mut Vec<String>) {
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

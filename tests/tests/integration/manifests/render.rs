//! The kustomize base rendered and every object checked; each class of mistake caught.

use serde_json::{Value, json};

use super::checks;
use super::support::{
    assert_no_problems, documents, file_documents, install_documents, render_base, repo_root,
};

#[tokio::test]
async fn base_renders_and_every_object_passes_the_checks() {
    let docs = install_documents().await;
    let (objects, problems) = checks::all(&docs);
    assert_no_problems(&problems);
    // What the base leaves out is only what 1.20 cannot take.
    let base = documents(&render_base().await);
    for doc in &docs {
        let optional = !base.contains(doc);
        let needs_newer = serde_json::to_string(doc).unwrap().contains("endPort");
        assert_eq!(optional, needs_newer, "{}", checks::id(doc));
    }

    // Every generated CRD is installed, and nothing else.
    let mut crds: Vec<String> = objects
        .crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    crds.sort();
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("manifests/crds"))
        .expect("manifests/crds")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .flat_map(|p| {
            file_documents(p.strip_prefix(repo_root()).unwrap().to_str().unwrap())
                .into_iter()
                .map(|d| d["metadata"]["name"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    files.sort();
    assert_eq!(
        crds, files,
        "the base must list every CRD in manifests/crds"
    );
    assert_eq!(
        crds,
        [
            "globalservices.meridian.io",
            "globaltrafficpolicies.meridian.io",
            "memberclusters.meridian.io"
        ]
    );

    // The example ConfigMap is a valid object of the shape the Deployments read.
    let example = file_documents("manifests/examples/meridian-cluster.yaml");
    let mut problems = Vec::new();
    let parsed = checks::parse(&example, &mut problems);
    assert_no_problems(&problems);
    let [cm] = parsed.config_maps.as_slice() else {
        panic!("the example is one ConfigMap");
    };
    assert_eq!(cm.metadata.name.as_deref(), Some(checks::CLUSTER_CONFIGMAP));
    assert!(cm.data.as_ref().is_some_and(|d| d.contains_key("name")));
}

/// The checks are not vacuous: each class of mistake in a copy of the base is reported.
#[tokio::test]
async fn checks_catch_broken_objects() {
    let docs = install_documents().await;
    let broken = |edit: &dyn Fn(&mut Vec<Value>)| {
        let mut d = docs.clone();
        edit(&mut d);
        checks::all(&d).1
    };
    let find = |d: &mut Vec<Value>, kind: &str, name: &str| -> usize {
        d.iter()
            .position(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
    };
    type Edit<'a> = Box<dyn Fn(&mut Vec<Value>) + 'a>;
    let cases: Vec<(&str, Edit<'_>)> = vec![
        (
            "wildcard",
            Box::new(|d| {
                let i = find(d, "ClusterRole", "meridian-controller");
                d[i]["rules"][0]["verbs"] = json!(["*"]);
            }),
        ),
        (
            "Secrets granted cluster-wide",
            Box::new(|d| {
                let i = find(d, "ClusterRole", "meridian-controller");
                d[i]["rules"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}));
            }),
        ),
        (
            "cluster-wide write verbs",
            Box::new(|d| {
                let i = find(d, "ClusterRole", "meridian-controller");
                d[i]["rules"].as_array_mut().unwrap().push(
                    json!({"apiGroups": [""], "resources": ["services"], "verbs": ["create"]}),
                );
            }),
        ),
        (
            "only meridian-controller may be bound",
            Box::new(|d| {
                let i = find(d, "RoleBinding", "meridian-controller");
                d[i]["subjects"].as_array_mut().unwrap().push(json!({"kind": "ServiceAccount", "name": "meridian-gateway", "namespace": "meridian-system"}));
            }),
        ),
        (
            "cannot list /endpoints",
            Box::new(|d| {
                let i = find(d, "ClusterRole", "meridian-controller");
                d[i]["rules"][0]["resources"] = json!(["services", "nodes", "pods"]);
            }),
        ),
        (
            "automountServiceAccountToken is not false",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-gateway");
                d[i]["spec"]["template"]["spec"]["automountServiceAccountToken"] = json!(true);
            }),
        ),
        (
            "readOnlyRootFilesystem",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-dns");
                d[i]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                    json!(false);
            }),
        ),
        (
            "unknown field .spec.template.spec.containers[0].readinessprobe",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-controller");
                let c = &mut d[i]["spec"]["template"]["spec"]["containers"][0];
                c["readinessprobe"] = c["readinessProbe"].take();
                c.as_object_mut().unwrap().remove("readinessProbe");
            }),
        ),
        (
            "must come from ConfigMap",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-gateway");
                d[i]["spec"]["template"]["spec"]["containers"][0]["env"][0] =
                    json!({"name": "MERIDIAN_CLUSTER_NAME", "value": "east"});
            }),
        ),
        (
            "not a container port",
            Box::new(|d| {
                let i = find(d, "Service", "meridian-gateway");
                d[i]["spec"]["ports"][0]["targetPort"] = json!("tunnels");
            }),
        ),
        (
            "type is not LoadBalancer",
            Box::new(|d| {
                let i = find(d, "Service", "meridian-gateway");
                d[i]["spec"]["type"] = json!("ClusterIP");
            }),
        ),
        (
            "unexpected kind \"PodDisruptionBudget\"",
            Box::new(|d| {
                d.push(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x", "namespace": "meridian-system"}}));
            }),
        ),
        (
            "port grpc admitted from [Some(Cluster)]",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-controller");
                d[i]["spec"]["ingress"][0]["from"] = json!([{"namespaceSelector": {}}]);
            }),
        ),
        (
            "port admin admitted from [Some(Anywhere)]",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-gateway");
                d[i]["spec"]["ingress"][2]
                    .as_object_mut()
                    .unwrap()
                    .remove("from");
            }),
        ),
        (
            "port admin admitted from [None]",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-dns");
                d[i]["spec"]["ingress"][1]["from"] =
                    json!([{"podSelector": {"matchLabels": {"meridian.io/monitoring": "true"}}}]);
            }),
        ),
        (
            "is not a container port of meridian-dns",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-dns");
                d[i]["spec"]["ingress"][0]["ports"][0]["port"] = json!(53);
            }),
        ),
        (
            "Deployment meridian-dns: selected by 0 NetworkPolicies",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-dns");
                d.remove(i);
            }),
        ),
        (
            "container port admin is 15053 but --admin listens on 15054",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-dns");
                let args = d[i]["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array_mut()
                    .unwrap();
                // The base sets no --admin (the default binds the pod IP on 15053).
                args.retain(|a| !a.as_str().is_some_and(|s| s.starts_with("--admin=")));
                args.push(json!("--admin=0.0.0.0:15054"));
            }),
        ),
        (
            "Deployment meridian-dns: --token-file",
            Box::new(|d| {
                let i = find(d, "Deployment", "meridian-dns");
                let vols = d[i]["spec"]["template"]["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap();
                for v in vols.iter_mut() {
                    if v["name"] == "token" {
                        let t = &mut v["projected"]["sources"][0]["serviceAccountToken"];
                        t.as_object_mut().unwrap().remove("audience");
                    }
                }
            }),
        ),
        (
            "is not the listener range",
            Box::new(|d| {
                let i = find(d, "NetworkPolicy", "meridian-gateway");
                d[i]["spec"]["ingress"][1]["ports"][0]["endPort"] = json!(16999);
            }),
        ),
        (
            "namespace Some(\"default\")",
            Box::new(|d| {
                let i = find(d, "Service", "meridian-dns");
                d[i]["metadata"]["namespace"] = json!("default");
            }),
        ),
    ];
    for (want, edit) in cases {
        let problems = broken(&*edit);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "a broken copy should report {want:?}; got {problems:#?}"
        );
    }
}

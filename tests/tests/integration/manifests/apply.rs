//! The base applied to a real kube-apiserver, whose authorizer says what each
//! ServiceAccount may do.

use serde_json::Value;

use super::support::{
    assert_no_problems, documents, file_documents, kubectl, markdown_objects, render_base,
};

/// Applies the base (and the documented examples) to a real kube-apiserver, then asks its
/// authorizer what each ServiceAccount may do.
#[tokio::test]
async fn base_applies_to_a_real_api_server_with_least_privilege() {
    let testbed = meridian_testbed::Testbed::start(&[meridian_testbed::ClusterSpec::new(
        "manifests",
        "sh",
        ["2000400001"],
    )])
    .await
    .expect("the testbed starts (tests/scripts/provision-k8s.sh provides the binaries)");
    let cluster = &testbed.clusters()[0];
    let kc = cluster
        .kubeconfig_path()
        .to_str()
        .expect("UTF-8 path")
        .to_owned();
    let k = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kc.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>, stdin: Option<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&refs, stdin.as_deref()).await
    };

    let rendered = render_base().await;
    let docs = documents(&rendered);
    // Twice: the second apply must be a no-op, not an error (upgrades re-apply the base).
    for round in 0..2 {
        let out = run(k(&["apply", "-f", "-"]), Some(rendered.clone())).await;
        assert!(
            out.ok,
            "apply round {round} rejected:\n{}\n{}",
            out.stderr, out.stdout
        );
        assert_eq!(
            out.stdout.lines().count(),
            docs.len(),
            "one line per object:\n{}",
            out.stdout
        );
    }
    let out = run(k(&["get", "-f", "-", "-o", "json"]), Some(rendered.clone())).await;
    assert!(out.ok, "reading the objects back: {}", out.stderr);
    let list: Value = serde_json::from_str(&out.stdout).expect("kubectl prints JSON");
    let items = list["items"].as_array().expect("a List");
    assert_eq!(items.len(), docs.len());
    let gateway = items
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "meridian-gateway")
        .expect("gateway Service stored");
    assert!(
        gateway["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .is_some_and(|p| p > 0),
        "a LoadBalancer Service gets a NodePort (what kind registrations use): {gateway}"
    );

    // The per-cluster ConfigMap and every object in docs/operations.md are valid too.
    let mut extra = file_documents("manifests/examples/meridian-cluster.yaml");
    extra.extend(markdown_objects("docs/operations.md"));
    let namespaces: std::collections::BTreeSet<String> = extra
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_owned))
        .filter(|n| n != "meridian-system")
        .collect();
    for ns in &namespaces {
        let out = run(k(&["create", "namespace", ns]), None).await;
        assert!(
            out.ok || out.stderr.contains("AlreadyExists"),
            "{}",
            out.stderr
        );
    }
    let extra_yaml: String = extra
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap()))
        .collect();
    // The CRDs were just created: retry while the API server starts serving them (bounded
    // by time, generously: establishing a CRD can take a while on a loaded machine).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let out = loop {
        let out = run(k(&["apply", "-f", "-"]), Some(extra_yaml.clone())).await;
        if out.ok
            || tokio::time::Instant::now() >= deadline
            || !out.stderr.contains("no matches for kind")
        {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(out.ok, "examples rejected:\n{}", out.stderr);
    let kinds: Vec<&str> = extra.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"GlobalTrafficPolicy") && kinds.contains(&"ConfigMap"),
        "docs/operations.md should show a ConfigMap and a GlobalTrafficPolicy: {kinds:?}"
    );

    // What each identity may do, as the API server's RBAC authorizer decides it.
    let sa = |name: &str| format!("system:serviceaccount:meridian-system:{name}");
    let controller = sa("meridian-controller");
    let allowed: &[&[&str]] = &[
        &["list", "services", "-A"],
        &["watch", "services", "-A"],
        &["watch", "endpoints", "-A"],
        &["list", "endpointslices.discovery.k8s.io", "-A"],
        &["watch", "nodes"],
        &["list", "pods", "-A"],
        &["get", "secrets", "-n", "meridian-system"],
        &["watch", "secrets", "-n", "meridian-system"],
        &["create", "services", "-n", "meridian-system"],
        &["patch", "services", "-n", "meridian-system"],
        &["delete", "services", "-n", "meridian-system"],
        &["watch", "globaltrafficpolicies.meridian.io", "-A"],
        &[
            "patch",
            "globaltrafficpolicies.meridian.io",
            "--subresource=status",
            "-n",
            "demo",
        ],
        &["create", "globalservices.meridian.io"],
        &[
            "patch",
            "globalservices.meridian.io",
            "--subresource=status",
        ],
        &["delete", "memberclusters.meridian.io"],
        &[
            "patch",
            "memberclusters.meridian.io",
            "--subresource=status",
        ],
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "meridian-system",
        ],
        &["create", "tokenreviews.authentication.k8s.io"],
        &[
            "get",
            "configmaps/meridian-ca-root",
            "-n",
            "meridian-system",
        ],
        &[
            "update",
            "configmaps/meridian-ca-root",
            "-n",
            "meridian-system",
        ],
        &["create", "configmaps", "-n", "meridian-system"],
    ];
    let denied: &[&[&str]] = &[
        // The controller emits no Events.
        &["create", "events", "-n", "demo"],
        &["get", "secrets", "-n", "default"],
        &["list", "secrets", "-A"],
        &["create", "secrets", "-n", "meridian-system"],
        &["create", "services", "-n", "default"],
        &["patch", "services", "-n", "demo"],
        &["create", "pods", "-n", "meridian-system"],
        &["delete", "pods", "-n", "default"],
        &["patch", "nodes"],
        &["create", "endpoints", "-n", "meridian-system"],
        &["get", "configmaps", "-n", "kube-system"],
        &[
            "update",
            "configmaps/meridian-cluster",
            "-n",
            "meridian-system",
        ],
        &[
            "delete",
            "configmaps/meridian-ca-root",
            "-n",
            "meridian-system",
        ],
        &["create", "configmaps", "-n", "default"],
        &["create", "globaltrafficpolicies.meridian.io", "-n", "demo"],
        &["patch", "globaltrafficpolicies.meridian.io", "-n", "demo"],
        &["update", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["impersonate", "serviceaccounts", "-n", "meridian-system"],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["create", "serviceaccounts/token", "-n", "meridian-system"],
    ];
    let can = |who: String, check: &'static [&'static str]| {
        let mut args = k(&["auth", "can-i"]);
        args.extend(check.iter().map(|s| s.to_string()));
        args.push(format!("--as={who}"));
        run(args, None)
    };
    let mut wrong = Vec::new();
    for (checks, want) in [(allowed, "yes"), (denied, "no")] {
        for check in checks.iter().copied() {
            let out = can(controller.clone(), check).await;
            let got = out.stdout.trim();
            if got != want {
                wrong.push(format!(
                    "controller can-i {check:?}: {got:?} {}, want {want}",
                    out.stderr.trim()
                ));
            }
        }
    }
    for who in ["meridian-gateway", "meridian-dns"] {
        for check in [
            &["list", "services", "-A"][..],
            &["get", "secrets", "-n", "meridian-system"],
            &["get", "configmaps", "-n", "meridian-system"],
            &["get", "globalservices.meridian.io"],
        ] {
            let out = can(sa(who), check).await;
            if out.stdout.trim() != "no" {
                wrong.push(format!(
                    "{who} can-i {check:?}: {:?}, want no",
                    out.stdout.trim()
                ));
            }
        }
    }
    assert_no_problems(&wrong);
}

//! `meridianctl ca init` and `ca issue-intermediate` against testbed clusters.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use meridian_identity::ClusterCa;
use meridian_testbed::{ClusterSpec, Testbed};

use super::support::{meridianctl, ok};

async fn ca_secret(client: kube::Client) -> std::collections::BTreeMap<String, String> {
    let s = Api::<Secret>::namespaced(client, "meridian-system")
        .get("meridian-ca")
        .await
        .unwrap();
    s.data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// One root, kept out of the members; each member gets its own intermediate.
#[tokio::test(flavor = "multi_thread")]
async fn each_member_gets_its_own_intermediate_and_never_the_root_key() {
    let tb = Testbed::start(&[
        ClusterSpec::new("east", "sh", ["z1"]),
        ClusterSpec::new("west", "sh", ["z2"]),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("ca");
    let out_dir = out_dir.to_str().unwrap();
    ok(&["ca", "init", "--out", out_dir]);
    assert!(
        !meridianctl(&["ca", "init", "--out", out_dir])
            .status
            .success(),
        "never overwrites a key"
    );
    let root_pem = std::fs::read_to_string(format!("{out_dir}/ca.crt")).unwrap();
    for c in tb.clusters() {
        let kc = c.kubeconfig_path().to_str().unwrap();
        let args = ["ca", "issue-intermediate", "--cluster", c.name()];
        ok(&[&args[..], &["--root-dir", out_dir, "--kubeconfig", kc]].concat());
        let data = ca_secret(c.client()).await;
        assert!(!data.contains_key("ca.key"), "no root key in a member");
        assert_eq!(data["ca.crt"], root_pem);
        let ca = ClusterCa::from_pem(
            &data["intermediate.crt"],
            &data["intermediate.key"],
            &data["ca.crt"],
        )
        .unwrap();
        assert_eq!(ca.cluster(), c.name());
        assert_eq!(ca.trust_domain(), "meridian.local");
        // The root alone, for gateway and DNS pods to pin the controller's TLS with.
        let cm = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            c.client(),
            "meridian-system",
        )
        .get("meridian-ca-root")
        .await
        .unwrap();
        assert_eq!(cm.data.unwrap()["root-cert.pem"], root_pem);
        assert_eq!(
            cm.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "meridian"
        );
    }
    let east = tb.cluster("east").unwrap();
    let kc = east.kubeconfig_path().to_str().unwrap().to_owned();

    // Again: a new intermediate (rotation), same root.
    let before = ca_secret(east.client()).await;
    ok(&[
        "ca",
        "issue-intermediate",
        "--cluster",
        "east",
        "--root-dir",
        out_dir,
        "--kubeconfig",
        &kc,
    ]);
    let after = ca_secret(east.client()).await;
    assert_ne!(before["intermediate.crt"], after["intermediate.crt"]);
    assert_eq!(before["ca.crt"], after["ca.crt"]);

    // An intermediate of a different root is refused rather than silently replacing
    // the mesh's trust.
    let other = dir.path().join("other");
    ok(&["ca", "init", "--out", other.to_str().unwrap()]);
    let out = meridianctl(&[
        "ca",
        "issue-intermediate",
        "--cluster",
        "east",
        "--root-dir",
        other.to_str().unwrap(),
        "--kubeconfig",
        &kc,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different mesh root"));

    // The root may live in a Secret of a cluster the operator picks, never in the
    // members' meridian-system/meridian-ca.
    let out = meridianctl(&[
        "ca",
        "init",
        "--secret",
        "meridian-system/meridian-ca",
        "--kubeconfig",
        &kc,
    ]);
    assert!(!out.status.success());
    ok(&[
        "ca",
        "init",
        "--secret",
        "mesh-pki/root",
        "--kubeconfig",
        &kc,
    ]);
    ok(&[
        "ca",
        "issue-intermediate",
        "--cluster",
        "west",
        "--root-secret",
        "mesh-pki/root",
        "--root-kubeconfig",
        &kc,
        "--out",
        dir.path().join("west").to_str().unwrap(),
    ]);
    ClusterCa::load_dir(&dir.path().join("west")).unwrap();
}

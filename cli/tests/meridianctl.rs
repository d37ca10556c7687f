//! `meridianctl` as a user runs it: the real binary, real files, exit codes and output;
//! cluster commands against real API servers of the hermetic testbed.

mod simulate {
    use std::io::Write;

    use serde_json::Value;

    use super::support::meridianctl;

    fn scenario(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn split(path: &str) -> Vec<(String, u64, f64)> {
        let out = meridianctl(&["simulate", "-f", path, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.trim().lines().count(),
            1,
            "exactly one JSON object: {stdout}"
        );
        let v: Value = serde_json::from_str(&stdout).unwrap();
        let rows: Vec<(String, u64, f64)> = v["localities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["locality"].as_str().unwrap().to_owned(),
                    l["priority"].as_u64().unwrap(),
                    l["percent"].as_f64().unwrap(),
                )
            })
            .collect();
        let sum: f64 = rows.iter().map(|r| r.2).sum();
        assert!((sum - 100.0).abs() <= 0.1, "percents sum to {sum}");
        rows
    }

    fn percents(path: &str) -> Vec<f64> {
        split(path).into_iter().map(|r| r.2).collect()
    }

    const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios");

    #[test]
    fn seed_scenarios() {
        let p = |f: &str| percents(&format!("{SEEDS}/{f}"));
        assert_eq!(p("01-local-zone-10-of-14.yaml"), [100.0, 0.0]);
        assert_eq!(p("02-local-zone-5-of-14.yaml"), [50.0, 50.0]);
        assert_eq!(p("03-local-zone-down.yaml"), [0.0, 100.0]);
        assert_eq!(p("04-health-20-30-no-panic.yaml"), [40.0, 60.0]);
        assert_eq!(p("05-health-20-30-panic.yaml"), [50.0, 50.0]);
        assert_eq!(p("06-distribute-50-50.yaml"), [50.0, 50.0]);
        assert_eq!(p("07-failover-three-regions.yaml"), [0.0, 100.0, 0.0]);
    }

    #[test]
    fn json_names_priority_and_panic() {
        let rows = split(&format!("{SEEDS}/02-local-zone-5-of-14.yaml"));
        assert_eq!(rows[1], ("sh/200002".to_owned(), 1, 50.0));
        let out = meridianctl(&[
            "simulate",
            "-f",
            &format!("{SEEDS}/05-health-20-30-panic.yaml"),
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["panic"], Value::Bool(true));
    }

    #[test]
    fn table_explains_each_share() {
        let out = meridianctl(&[
            "simulate",
            "-f",
            &format!("{SEEDS}/07-failover-three-regions.yaml"),
        ]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("failover[0] region"), "{text}");
        assert!(text.contains("P1=100%"), "{text}");
    }

    #[test]
    fn thirds_still_sum_to_100() {
        let f = scenario(
            "caller: a/z0\nlocalities:\n  - {locality: a/z0, total: 3, healthy: 0}\n  - {locality: a/z1, total: 3, healthy: 3}\n  - {locality: a/z2, total: 3, healthy: 3}\n  - {locality: a/z3, total: 3, healthy: 3}\n",
        );
        assert_eq!(percents(f.path().to_str().unwrap()).len(), 4);
    }

    /// Every kind of bad input: exit code 2 and one line naming the field; never a panic.
    #[test]
    fn bad_input_is_one_clear_line() {
        let cases = [
            ("caller: sh/a\nbogus: 1\nlocalities: []\n", "bogus"),
            (
                "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 14, healthy: 15}\n",
                "localities[0].healthy",
            ),
            (
                "caller: sh/a\nlocalities:\n  - {locality: sh//a, total: 1, healthy: 1}\n",
                "localities[0].locality",
            ),
            (
                "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1, weight: -1}\n",
                "localities[0].weight",
            ),
            (
                "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: -1, healthy: 1}\n",
                "localities[0].total",
            ),
            (
                "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1, colour: red}\n",
                "colour",
            ),
            (
                "caller: a/b/c/d\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
                "caller",
            ),
            (
                "caller: sh/a\npanicThreshold: 101\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
                "panicThreshold",
            ),
            (
                "caller: sh/a\nlocalityLbSetting: {distribute: [{from: sh, to: {sh/a: 10}}]}\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
                "localityLbSetting.distribute[0].to",
            ),
            ("caller: sh/a\nlocalities: [\n", ""),
            ("caller: sh/a\n", "localities"),
        ];
        for (text, field) in cases {
            let f = scenario(text);
            let out = meridianctl(&["simulate", "-f", f.path().to_str().unwrap(), "-o", "json"]);
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(2), "{text:?} → {stderr}");
            assert!(
                out.stdout.is_empty(),
                "{text:?} printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "one line for {text:?}: {stderr}"
            );
            assert!(
                stderr.starts_with("error: ") && stderr.contains(field),
                "{text:?}: {stderr}"
            );
        }
        let out = meridianctl(&["simulate", "-f", "/nonexistent/scenario.yaml"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

/// Runs the real `meridianctl` against testbed clusters.
mod support {
    use std::process::{Command, Output};

    pub(crate) fn meridianctl(args: &[&str]) -> Output {
        // Never fall back to a kubeconfig of the machine running the tests.
        Command::new(env!("CARGO_BIN_EXE_meridianctl"))
            .args(args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap()
    }

    pub(crate) fn ok(args: &[&str]) -> String {
        let out = meridianctl(args);
        assert!(
            out.status.success(),
            "meridianctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

mod cluster {
    use k8s_openapi::api::core::v1::{Secret, Service};
    use kube::api::ListParams;
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::{Api, Client, Config};
    use meridian_crd::registration::{self, CLUSTER_NAME_ANNOTATION, GATEWAY_ADDRESS_ANNOTATION};
    use meridian_testbed::{ClusterSpec, Testbed};

    use super::support::{meridianctl, ok};

    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);

    async fn client_from(kubeconfig: &str) -> Client {
        let kc = Kubeconfig::from_yaml(kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    async fn registrations(client: Client) -> Vec<Secret> {
        Api::<Secret>::namespaced(client, "meridian-system")
            .list(&ListParams::default().labels(&registration::selector()))
            .await
            .unwrap()
            .items
    }

    /// `cluster add` writes a working, least-privilege registration; again is harmless;
    /// `cluster remove` takes it away.
    #[tokio::test(flavor = "multi_thread")]
    async fn add_then_remove() {
        let tb = Testbed::start(&[
            ClusterSpec::new("east", "sh", ["2000400001"]),
            ClusterSpec::new("west", "sh", ["200002"]),
        ])
        .await
        .unwrap();
        let east = tb.cluster("east").unwrap();
        let west = tb.cluster("west").unwrap();
        let (host, member) = (
            east.kubeconfig_path().to_str().unwrap(),
            west.kubeconfig_path().to_str().unwrap(),
        );
        let add = [
            "cluster",
            "add",
            "--kubeconfig",
            member,
            "--context",
            "west",
            "--host-kubeconfig",
            host,
            "--gateway-address",
            "127.0.0.9:15008",
        ];
        let out = ok(&add);
        assert!(out.contains("cluster \"west\" registered"), "{out}");
        ok(&add);

        let secrets = registrations(east.client()).await;
        assert_eq!(secrets.len(), 1, "one registration after two adds");
        let s = &secrets[0];
        let annotations = s.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[CLUSTER_NAME_ANNOTATION], "west");
        assert_eq!(annotations[GATEWAY_ADDRESS_ANNOTATION], "127.0.0.9:15008");
        let kubeconfig = registration::kubeconfig(s).unwrap();
        assert!(kubeconfig.contains(west.server_url()), "{kubeconfig}");

        // The minted identity reads what the controller needs and nothing else.
        let reader = client_from(&kubeconfig).await;
        Api::<Service>::all(reader.clone())
            .list(&ListParams::default())
            .await
            .expect("reader lists Services");
        let denied = Api::<Secret>::all(reader)
            .list(&ListParams::default())
            .await
            .unwrap_err();
        assert!(
            matches!(denied, kube::Error::Api(ref s) if s.code == 403),
            "{denied:?}"
        );

        ok(&[
            "cluster",
            "remove",
            "west",
            "--host-kubeconfig",
            host,
            "--kubeconfig",
            member,
            "--context",
            "west",
        ]);
        assert!(registrations(east.client()).await.is_empty());
        let gone = meridianctl(&["cluster", "remove", "west", "--host-kubeconfig", host]);
        assert!(!gone.status.success());
        assert!(
            String::from_utf8_lossy(&gone.stderr)
                .contains("no registration Secret for cluster \"west\"")
        );
    }

    /// The token of a registration kubeconfig and the lifetime the API server granted it
    /// (`exp - iat` of the JWT).
    fn token_and_lifetime(kubeconfig: &str) -> (String, i64) {
        use base64::Engine as _;
        let kc: serde_json::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
        let token = kc["users"][0]["user"]["token"].as_str().unwrap().to_owned();
        let payload = token.split('.').nth(1).expect("a JWT");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        (token, lifetime)
    }

    fn kubeconfig_of(secret: &Secret) -> String {
        registration::kubeconfig(secret).unwrap()
    }

    async fn phase(host: Client, member: &str) -> Option<String> {
        let m = Api::<meridian_crd::MemberCluster>::all(host)
            .get_opt(member)
            .await
            .ok()??;
        Some(m.status?.phase.to_string())
    }

    /// Reader tokens expire (30 days unless --token-ttl says otherwise, as the API server
    /// grants it), and `rotate-credentials` swaps in a new one while the old one keeps
    /// working and the host's controller keeps the member in sync.
    #[tokio::test(flavor = "multi_thread")]
    async fn reader_tokens_expire_and_rotate_without_downtime() {
        let tb = Testbed::start(&[
            ClusterSpec::new("east", "sh", ["2000400001"]),
            ClusterSpec::new("west", "sh", ["200002"]),
        ])
        .await
        .unwrap();
        let east = tb.cluster("east").unwrap();
        let west = tb.cluster("west").unwrap();
        let (host, member) = (
            east.kubeconfig_path().to_str().unwrap(),
            west.kubeconfig_path().to_str().unwrap(),
        );
        let out = ok(&[
            "cluster",
            "add",
            "--kubeconfig",
            member,
            "--context",
            "west",
            "--host-kubeconfig",
            host,
            "--gateway-address",
            "127.0.0.9:15008",
        ]);
        assert!(out.contains("the token expires"), "{out}");
        let before = registrations(east.client()).await.remove(0);
        let (old_token, lifetime) = token_and_lifetime(&kubeconfig_of(&before));
        assert_eq!(lifetime, 30 * 24 * 3600, "30 days by default");

        // The host's controller follows the registration.
        let ip = tb.allocate_address().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let _controller = tokio::process::Command::new(
            meridian_testbed::mesh::meridian_binary("meridian-controller").unwrap(),
        )
        .args([
            "--cluster-name=east",
            "--kubeconfig",
            host,
            "--context=east",
        ])
        .arg(format!("--grpc-addr={ip}:15010"))
        .arg(format!("--metrics-addr={ip}:15014"))
        .args(["--install-crds", "--leader-elect=false"])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the controller binary (cargo build -p meridian-controller)");
        let synced = move || async move {
            (phase(east.client(), "west").await.as_deref() == Some("Synced")).then_some(())
        };
        let what = format!("west Synced (controller log: {})", log.path().display());
        meridian_api::testing::eventually(&what, WAIT, POLL, synced).await;

        let out = ok(&[
            "cluster",
            "rotate-credentials",
            "west",
            "--kubeconfig",
            member,
            "--context",
            "west",
            "--host-kubeconfig",
            host,
            "--token-ttl",
            "2h",
        ]);
        assert!(
            out.contains("rotated the token of cluster \"west\""),
            "{out}"
        );
        assert!(!out.contains(&old_token), "the token is never printed");
        let after = registrations(east.client()).await.remove(0);
        let (new_token, lifetime) = token_and_lifetime(&kubeconfig_of(&after));
        assert_ne!(new_token, old_token);
        assert_eq!(lifetime, 2 * 3600, "--token-ttl is requested and granted");
        assert_eq!(
            after.metadata.annotations, before.metadata.annotations,
            "name and gateway address kept"
        );
        assert_eq!(
            kubeconfig_of(&after).replace(&new_token, ""),
            kubeconfig_of(&before).replace(&old_token, ""),
            "only the token changed"
        );
        // No downtime: both tokens work until the old one expires.
        for kubeconfig in [kubeconfig_of(&before), kubeconfig_of(&after)] {
            Api::<Service>::all(client_from(&kubeconfig).await)
                .list(&ListParams::default())
                .await
                .expect("the token reads Services");
        }
        // The controller reconnects with the new token and the member is Synced with it.
        let what = format!(
            "the controller to reconnect (log: {})",
            log.path().display()
        );
        meridian_api::testing::eventually(&what, WAIT, POLL, || async {
            std::fs::read_to_string(log.path())
                .ok()?
                .contains("registration changed, reconnecting")
                .then_some(())
        })
        .await;
        meridian_api::testing::eventually("west Synced again", WAIT, POLL, synced).await;

        let short = meridianctl(&[
            "cluster",
            "rotate-credentials",
            "west",
            "--kubeconfig",
            member,
            "--host-kubeconfig",
            host,
            "--token-ttl",
            "5m",
        ]);
        assert_eq!(short.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10m"));
        let unknown = meridianctl(&[
            "cluster",
            "rotate-credentials",
            "north",
            "--kubeconfig",
            member,
            "--host-kubeconfig",
            host,
        ]);
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr)
                .contains("no registration Secret for cluster \"north\"")
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_is_refused_clearly() {
        let tb = Testbed::start(&[ClusterSpec::new("east", "sh", ["z1"])])
            .await
            .unwrap();
        let host = tb
            .cluster("east")
            .unwrap()
            .kubeconfig_path()
            .to_str()
            .unwrap()
            .to_owned();
        let out = meridianctl(&[
            "cluster",
            "add",
            "--kubeconfig",
            &host,
            "--context",
            "nope",
            "--host-kubeconfig",
            &host,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("context \"nope\" not found"));
        let out = meridianctl(&[
            "cluster",
            "add",
            "--kubeconfig",
            &host,
            "--name",
            "Bad_Name",
            "--host-kubeconfig",
            &host,
        ]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("is not a DNS label"));
        // What the host's controller would refuse is refused before anything is created.
        let out = meridianctl(&[
            "cluster",
            "add",
            "--kubeconfig",
            &host,
            "--server",
            "http://127.0.0.1:8080",
            "--host-kubeconfig",
            &host,
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("would refuse this registration: clusters[0].cluster.server: must be an https:// URL"),
            "{err}"
        );
        assert!(
            registrations(tb.cluster("east").unwrap().client())
                .await
                .is_empty()
        );
    }
}

mod ca {
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
}

//! The kind configs.

use super::support::repo_root;

/// The kind configs: strict schema for the fields used, the localities of the seed
/// scenario, and subnets that overlap nowhere.
#[test]
fn kind_configs_are_valid() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct KindCluster {
        kind: String,
        api_version: String,
        name: String,
        networking: Networking,
        nodes: Vec<Node>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Networking {
        pod_subnet: String,
        service_subnet: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        role: String,
        // Kept untyped: an unquoted zone like 200002 is a YAML integer, which kind rejects,
        // while a typed String would silently accept it.
        labels: std::collections::BTreeMap<String, serde_yaml_ng::Value>,
    }
    fn cidr(s: &str) -> (u32, u32) {
        let (ip, len) = s
            .split_once('/')
            .unwrap_or_else(|| panic!("{s}: not a CIDR"));
        let ip: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        let len: u32 = len.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!((8..=28).contains(&len), "{s}: unreasonable prefix length");
        let mask = u32::MAX << (32 - len);
        assert_eq!(u32::from(ip) & !mask, 0, "{s}: host bits set");
        (u32::from(ip), mask)
    }

    let want = [
        ("east", "sh", "2000400001"),
        ("west", "sh", "200002"),
        ("far", "bj", "bj-1"),
    ];
    let dir = repo_root().join("kind-configs");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("kind-configs/")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(files, ["east.yaml", "far.yaml", "west.yaml"]);
    let mut subnets: Vec<(String, (u32, u32))> = Vec::new();
    for (name, region, zone) in want {
        let path = dir.join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let config: KindCluster =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(config.kind, "Cluster", "{name}");
        assert_eq!(config.api_version, "kind.x-k8s.io/v1alpha4", "{name}");
        assert_eq!(config.name, name);
        assert!(
            config.nodes.iter().any(|n| n.role == "control-plane"),
            "{name}: no control-plane node"
        );
        for node in &config.nodes {
            assert!(
                ["control-plane", "worker"].contains(&node.role.as_str()),
                "{name}: role {}",
                node.role
            );
            for (key, value) in &node.labels {
                assert!(
                    value.is_string(),
                    "{name}: label {key} = {value:?} must be a quoted string"
                );
            }
            let label = |key: &str| node.labels.get(key).and_then(serde_yaml_ng::Value::as_str);
            assert_eq!(
                label("topology.kubernetes.io/region"),
                Some(region),
                "{name}"
            );
            assert_eq!(label("topology.kubernetes.io/zone"), Some(zone), "{name}");
        }
        for s in [
            &config.networking.pod_subnet,
            &config.networking.service_subnet,
        ] {
            subnets.push((format!("{name} {s}"), cidr(s)));
        }
    }
    // Docker's default bridge and kind's network.
    subnets.push(("docker 172.17.0.0/16".into(), cidr("172.17.0.0/16")));
    subnets.push(("kind 172.18.0.0/16".into(), cidr("172.18.0.0/16")));
    for (i, (a, (ip_a, mask_a))) in subnets.iter().enumerate() {
        for (b, (ip_b, mask_b)) in &subnets[i + 1..] {
            let mask = mask_a & mask_b; // the shorter prefix
            assert_ne!(ip_a & mask, ip_b & mask, "{a} overlaps {b}");
        }
    }
}

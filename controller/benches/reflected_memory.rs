//! What a member's pods cost the controller's memory with and without
//! [`meridian_controller::members::reflected`]: 4,000 pods, each with a 256 KiB annotation (a
//! `last-applied-configuration` as a member can write it), go through a reflector store as the
//! pod watcher delivers them, each with a spec and a status as the kubelet reports them. The
//! stripped store keeps labels and the pod's IPs. Prints the bytes the store retains (objects as JSON) and the
//! growth of the process's RSS, for both, and their ratio.
//!
//! `cargo bench -p meridian-controller --bench reflected_memory` (release), or quicker
//! `cargo test -p meridian-controller --bench reflected_memory` (debug, same figures).
//! Set `PODS` / `ANNOTATION_KIB` to change the load.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// One pod as a member serves it, with a `bytes`-long annotation.
fn pod(i: usize, bytes: usize) -> Pod {
    let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
    let mut p: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("echo-{i}"), "namespace": "demo"},
        "spec": {
            "nodeName": "node-1",
            "containers": [{
                "name": "echo",
                "image": "registry.example/echo:1.0",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": "MODE", "value": "echo"}]
            }]
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "echo", "ready": true, "restartCount": 0,
                "image": "registry.example/echo:1.0", "imageID": "sha256:0123456789abcdef",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]
        }
    }))
    .expect("pod");
    let m = &mut p.metadata;
    m.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
    m.resource_version = Some(i.to_string());
    m.labels = Some(BTreeMap::from([
        ("app".to_owned(), "echo".to_owned()),
        ("version".to_owned(), "v1".to_owned()),
    ]));
    // Distinct per pod, as real annotations are (no sharing by accident).
    let mut value = format!("{i:08}");
    value.push_str(&"x".repeat(bytes.saturating_sub(value.len())));
    m.annotations = Some(BTreeMap::from([(
        "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
        value,
    )]));
    m.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "echo-5d9c7f".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
        ..OwnerReference::default()
    }]);
    m.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kube-controller-manager".into()),
        operation: Some("Update".into()),
        ..ManagedFieldsEntry::default()
    }]);
    p
}

/// Lists `pods` pods into a store (as the watcher's initial list does), each passed through
/// `strip` first; returns the store, the bytes it retains and the RSS growth.
fn load(pods: usize, bytes: usize, strip: fn(&mut Pod)) -> (Store<Pod>, u64, u64) {
    let before = rss_bytes();
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..pods {
        let mut p = pod(i, bytes);
        strip(&mut p);
        writer.apply_watcher_event(&Event::InitApply(p));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let retained: u64 = reader
        .state()
        .iter()
        .map(|p| serde_json::to_vec(p.as_ref()).map_or(0, |v| v.len() as u64))
        .sum();
    let grown = rss_bytes().saturating_sub(before);
    (reader, retained, grown)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let pods = env("PODS", 4000);
    let kib = env("ANNOTATION_KIB", 256);
    // Stripped first, so the unstripped run cannot leave freed memory behind for it.
    let (slim, slim_bytes, slim_rss) = load(
        pods,
        kib * 1024,
        meridian_controller::members::reflected::pod,
    );
    assert_eq!(slim.state().len(), pods);
    let (full, full_bytes, full_rss) = load(pods, kib * 1024, |_| {});
    assert_eq!(full.state().len(), pods);
    println!("{pods} pods, one {kib} KiB annotation each, in a reflector store:");
    println!("                  retained (JSON)      RSS growth");
    println!(
        "  unstripped   {:>12.1} MiB  {:>12.1} MiB",
        mib(full_bytes),
        mib(full_rss)
    );
    println!(
        "  stripped     {:>12.1} MiB  {:>12.1} MiB",
        mib(slim_bytes),
        mib(slim_rss)
    );
    println!(
        "  ratio        {:>12.0} x    {:>12.0} x",
        full_bytes as f64 / slim_bytes.max(1) as f64,
        full_rss as f64 / slim_rss.max(1) as f64
    );
    // The retained size is deterministic: stripping must keep it small.
    assert!(
        full_bytes > 100 * slim_bytes,
        "stripping kept too much: {slim_bytes} of {full_bytes} bytes"
    );
}

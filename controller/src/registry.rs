//! The registry of member clusters: the own cluster, plus one member per Secret labelled
//! `meridian.io/cluster: "true"` in the controller's namespace (key `kubeconfig`, annotation
//! `meridian.io/cluster-name`, default the Secret's name).
//!
//! The Secrets are reflected, and after every change the whole desired member set is
//! recomputed from the store (level-triggered): new members start, members whose Secret
//! changed restart, members whose Secret is gone stop. A bad Secret only affects its member.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::member::{Credentials, Member, MemberSettings, MemberSpec, reconnect_backoff};

/// Label that marks a registration Secret.
pub const CLUSTER_LABEL: &str = "meridian.io/cluster";
/// Annotation naming the member (default: the Secret's name).
pub const CLUSTER_NAME_ANNOTATION: &str = "meridian.io/cluster-name";
/// Annotation with the member gateway's `host:port`, used when its gateway Service has no
/// LoadBalancer ingress.
pub const GATEWAY_ADDRESS_ANNOTATION: &str = "meridian.io/gateway-address";
/// Secret key holding the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// A registration that could not be turned into a member spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Cluster name it claimed.
    pub name: String,
    /// The Secret, `<namespace>/<name>`.
    pub secret: String,
    /// Why.
    pub reason: String,
}

/// Turns a Secret into a member spec, or says why it cannot.
pub fn spec_from_secret(secret: &Secret) -> Result<MemberSpec, Rejected> {
    let name = secret
        .annotations()
        .get(CLUSTER_NAME_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| secret.name_any());
    let secret_ref = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    let reject = |reason: String| Rejected {
        name: name.clone(),
        secret: secret_ref.clone(),
        reason,
    };
    if !is_dns_label(&name) {
        return Err(reject(format!(
            "cluster name {name:?} is not a DNS label (lower-case alphanumerics and '-', at most 63)"
        )));
    }
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(KUBECONFIG_KEY).cloned())
        })
        .ok_or_else(|| reject(format!("the Secret has no {KUBECONFIG_KEY:?} key")))?;
    Ok(MemberSpec {
        name: name.clone(),
        credentials: Credentials::Kubeconfig(text),
        secret: Some(secret_ref.clone()),
        gateway_address: secret
            .annotations()
            .get(GATEWAY_ADDRESS_ANNOTATION)
            .cloned(),
    })
}

/// Whether `s` is a DNS-1123 label: member names become parts of DNS names and SPIFFE IDs.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The current members and rejected registrations.
pub struct Registry {
    local: MemberSpec,
    settings: MemberSettings,
    members: ArcSwap<BTreeMap<String, Arc<Member>>>,
    rejected: ArcSwap<Vec<Rejected>>,
}

impl Registry {
    /// A registry with only the own cluster, started.
    pub fn new(local: MemberSpec, settings: MemberSettings) -> Arc<Registry> {
        let own = Arc::new(Member::start(local.clone(), settings.clone()));
        Arc::new(Registry {
            members: ArcSwap::from_pointee(BTreeMap::from([(local.name.clone(), own)])),
            rejected: ArcSwap::from_pointee(Vec::new()),
            local,
            settings,
        })
    }

    /// The own cluster's name.
    pub fn local_name(&self) -> &str {
        &self.local.name
    }

    /// Current members by name.
    pub fn members(&self) -> Arc<BTreeMap<String, Arc<Member>>> {
        self.members.load_full()
    }

    /// Registrations that were rejected (bad name, no kubeconfig key, duplicate).
    pub fn rejected(&self) -> Arc<Vec<Rejected>> {
        self.rejected.load_full()
    }

    /// Recomputes the member set from the registration Secrets.
    pub fn sync(&self, secrets: &[Arc<Secret>]) {
        let mut sorted: Vec<&Arc<Secret>> = secrets.iter().collect();
        // Deterministic winner for duplicate names: oldest Secret name first.
        sorted.sort_by_key(|s| s.name_any());
        let mut desired: BTreeMap<String, MemberSpec> = BTreeMap::new();
        let mut rejected = Vec::new();
        for s in sorted {
            match spec_from_secret(s) {
                Ok(spec) if spec.name == self.local.name => rejected.push(Rejected {
                    name: spec.name,
                    secret: spec.secret.unwrap_or_default(),
                    reason: "names the controller's own cluster, which is always a member".into(),
                }),
                Ok(spec) if desired.contains_key(&spec.name) => rejected.push(Rejected {
                    reason: format!(
                        "cluster {:?} is already registered by Secret {}",
                        spec.name,
                        desired[&spec.name].secret.as_deref().unwrap_or_default()
                    ),
                    name: spec.name,
                    secret: spec.secret.unwrap_or_default(),
                }),
                Ok(spec) => {
                    desired.insert(spec.name.clone(), spec);
                }
                Err(r) => rejected.push(r),
            }
        }
        for r in &rejected {
            warn!(cluster = %r.name, secret = %r.secret, reason = %r.reason, "registration rejected");
        }

        let current = self.members.load_full();
        let mut next: BTreeMap<String, Arc<Member>> = BTreeMap::new();
        next.insert(self.local.name.clone(), current[&self.local.name].clone());
        for (name, spec) in desired {
            match current.get(&name) {
                Some(m) if m.spec == spec => {
                    next.insert(name, m.clone());
                }
                Some(_) => {
                    info!(cluster = %name, "registration changed, reconnecting");
                    next.insert(name, Arc::new(Member::start(spec, self.settings.clone())));
                }
                None => {
                    info!(cluster = %name, secret = ?spec.secret, "member registered");
                    next.insert(name, Arc::new(Member::start(spec, self.settings.clone())));
                }
            }
        }
        for name in current.keys().filter(|n| !next.contains_key(*n)) {
            info!(cluster = %name, "member unregistered");
            self.settings.metrics.remove_member(name);
        }
        self.settings.metrics.members.set(next.len() as i64);
        // Dropping the last Arc of a removed member aborts its tasks.
        self.members.store(Arc::new(next));
        self.rejected.store(Arc::new(rejected));
        self.settings.notify.notify_one();
    }

    /// Watches the registration Secrets of `namespace` and keeps the member set in sync.
    /// Runs until aborted.
    pub async fn run(self: Arc<Self>, client: Client, namespace: String) {
        let api: Api<Secret> = Api::namespaced(client, &namespace);
        let cfg = watcher::Config::default().labels(&format!("{CLUSTER_LABEL}=true"));
        let (reader, writer): (Store<Secret>, _) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, cfg)).backoff(
            kube::runtime::watcher::ExponentialBackoff::from(reconnect_backoff()),
        );
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    listed = true;
                    self.sync(&reader.state());
                }
                Ok(_) if listed => self.sync(&reader.state()),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "watching registration Secrets failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, cluster: Option<&str>, kubeconfig: Option<&str>) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("meridian-system".into());
        if let Some(c) = cluster {
            s.metadata.annotations = Some([(CLUSTER_NAME_ANNOTATION.into(), c.into())].into());
        }
        if let Some(k) = kubeconfig {
            s.data = Some([(KUBECONFIG_KEY.into(), ByteString(k.as_bytes().to_vec()))].into());
        }
        s
    }

    fn registry() -> Arc<Registry> {
        // Nothing listens on port 9: the local member simply stays unreachable.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let settings = MemberSettings {
            gateway_namespace: "meridian-system".into(),
            gateway_service: "meridian-gateway".into(),
            probe_interval: std::time::Duration::from_secs(60),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            notify: Arc::new(tokio::sync::Notify::new()),
        };
        let local = MemberSpec {
            name: "home".into(),
            credentials: Credentials::Local(client, "http://127.0.0.1:9".into()),
            secret: None,
            gateway_address: None,
        };
        Registry::new(local, settings)
    }

    fn names(r: &Registry) -> Vec<String> {
        r.members().keys().cloned().collect()
    }

    #[tokio::test]
    async fn member_set_follows_the_secrets() {
        let r = registry();
        assert_eq!(names(&r), ["home"]);
        let a = Arc::new(secret("a", None, Some("one")));
        let b = Arc::new(secret("b", Some("bee"), Some("two")));
        r.sync(&[a.clone(), b.clone()]);
        assert_eq!(names(&r), ["a", "bee", "home"]);
        let first_a = r.members()["a"].clone();

        // Unchanged Secret: same member. Changed kubeconfig: a new member.
        r.sync(&[a.clone(), b.clone()]);
        assert!(Arc::ptr_eq(&first_a, &r.members()["a"]));
        let a2 = Arc::new(secret("a", None, Some("one, rotated")));
        r.sync(&[a2.clone(), b.clone()]);
        assert!(!Arc::ptr_eq(&first_a, &r.members()["a"]));

        // Duplicates and the own name are rejected; the first registration stays.
        let dup = Arc::new(secret("c", Some("bee"), Some("three")));
        let own = Arc::new(secret("d", Some("home"), Some("four")));
        let bad = Arc::new(secret("e", None, None));
        r.sync(&[a2.clone(), b.clone(), dup, own, bad]);
        assert_eq!(names(&r), ["a", "bee", "home"]);
        assert_eq!(
            r.members()["bee"].spec.secret.as_deref(),
            Some("meridian-system/b")
        );
        let rejected: Vec<_> = r.rejected().iter().map(|x| x.name.clone()).collect();
        assert_eq!(rejected, ["bee", "home", "e"]);

        // Deleting a Secret removes its member; the own cluster always stays.
        r.sync(&[b]);
        assert_eq!(names(&r), ["bee", "home"]);
        r.sync(&[]);
        assert_eq!(names(&r), ["home"]);
    }

    #[test]
    fn secrets_become_specs() {
        let spec = spec_from_secret(&secret("east", None, Some("apiVersion: v1"))).unwrap();
        assert_eq!(spec.name, "east");
        assert_eq!(spec.secret.as_deref(), Some("meridian-system/east"));
        assert_eq!(
            spec_from_secret(&secret("x", Some("west"), Some("k")))
                .unwrap()
                .name,
            "west"
        );
        let r = spec_from_secret(&secret("x", None, None)).unwrap_err();
        assert!(r.reason.contains("kubeconfig"), "{r:?}");
        let r = spec_from_secret(&secret("x", Some("Bad_Name"), Some("k"))).unwrap_err();
        assert!(r.reason.contains("DNS label"), "{r:?}");
        // Debug output never carries the kubeconfig.
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("apiVersion"), "{dbg}");
    }
}

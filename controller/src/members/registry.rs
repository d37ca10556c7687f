//! The registry of member clusters: the own cluster, plus one member per Secret labelled
//! `meridian.io/cluster: "true"` in the controller's namespace (key `kubeconfig`, annotation
//! `meridian.io/cluster-name`, default the Secret's name; `meridian.io/context` picks a
//! context of a kubeconfig that has several).
//!
//! The Secrets are reflected, and after every change the whole desired member set is
//! recomputed from the store (level-triggered): new members start, members whose Secret
//! changed restart, members whose Secret is gone stop. A bad Secret only affects its member.
//!
//! A cluster name belongs to the oldest Secret that claims it (creation time, then Secret
//! name), whether or not that Secret is valid: a newer Secret can never take a member over;
//! it is reported as a `Conflict` naming the owner. Kubeconfigs are checked by
//! [`crate::members::kubeconfig::accept`] before anything connects.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::crd::Phase;
use crate::members::kubeconfig;
use crate::members::member::{Credentials, Member, MemberSettings, MemberSpec, reconnect_backoff};

pub use meridian_crd::registration::{
    CLUSTER_LABEL, CLUSTER_NAME_ANNOTATION, CONTEXT_ANNOTATION, GATEWAY_ADDRESS_ANNOTATION,
    KUBECONFIG_KEY, is_dns_label,
};

/// A registration that could not be turned into a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// Cluster name it claimed.
    pub name: String,
    /// The Secret, `<namespace>/<name>`.
    pub secret: String,
    /// `InvalidCredentials` (bad name, no or refused kubeconfig) or `Conflict` (the name
    /// belongs to an older Secret, or to the own cluster).
    pub phase: Phase,
    /// Why; never carries a credential.
    pub reason: String,
    /// The `MemberCluster` that reports it: the claimed name when the registration owns it,
    /// else `<name>.<secret name>` (a dot never occurs in a member name, so it cannot
    /// collide with one).
    pub report_as: String,
}

/// The cluster name a Secret claims.
fn claimed_name(secret: &Secret) -> String {
    secret
        .annotations()
        .get(CLUSTER_NAME_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| secret.name_any())
}

fn secret_ref(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    )
}

/// The `MemberCluster` name of a registration that does not own its claimed name: `<label>.
/// <secret>`, a DNS subdomain (at most 253 characters; a longer Secret name is shortened and
/// made unique with a hash).
pub(crate) fn report_name(claimed: &str, secret_name: &str) -> String {
    let label = if is_dns_label(claimed) {
        claimed
    } else {
        "invalid-name"
    };
    let full = format!("{label}.{secret_name}");
    if full.len() <= 253 {
        return full;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret_name.hash(&mut h);
    let keep: String = secret_name.chars().take(160).collect();
    format!(
        "{label}.{}-{:016x}",
        keep.trim_end_matches(['-', '.']),
        h.finish()
    )
}

/// Turns a Secret into a member spec, or says why it cannot. The kubeconfig is accepted or
/// refused here, before anything connects.
pub(crate) fn spec_from_secret(secret: &Secret) -> Result<MemberSpec, Rejected> {
    let name = claimed_name(secret);
    let secret_ref = secret_ref(secret);
    let reject = |reason: String| Rejected {
        name: name.clone(),
        secret: secret_ref.clone(),
        phase: Phase::InvalidCredentials,
        reason,
        report_as: if is_dns_label(&name) {
            name.clone()
        } else {
            report_name(&name, &secret.name_any())
        },
    };
    if !is_dns_label(&name) {
        return Err(reject(format!(
            "cluster name {name:?} is not a DNS label (lower-case alphanumerics and '-', at most 63)"
        )));
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(KUBECONFIG_KEY).map(|s| s.clone().into_bytes()))
        })
        .ok_or_else(|| reject(format!("the Secret has no {KUBECONFIG_KEY:?} key")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| reject(format!("the Secret's {KUBECONFIG_KEY:?} key is not UTF-8")))?;
    let context = secret
        .annotations()
        .get(CONTEXT_ANNOTATION)
        .map(String::as_str);
    let accepted = kubeconfig::accept(&text, context)
        .map_err(|e| reject(format!("registration kubeconfig refused: {e}")))?;
    Ok(MemberSpec {
        name: name.clone(),
        credentials: Credentials::Kubeconfig(Arc::new(accepted)),
        secret: Some(secret_ref.clone()),
        gateway_address: secret
            .annotations()
            .get(GATEWAY_ADDRESS_ANNOTATION)
            .cloned(),
    })
}

/// The current members and rejected registrations.
pub(crate) struct Registry {
    local: MemberSpec,
    settings: MemberSettings,
    members: ArcSwap<BTreeMap<String, Arc<Member>>>,
    rejected: ArcSwap<Vec<Rejected>>,
}

impl Registry {
    /// A registry with only the own cluster, started.
    pub(crate) fn new(local: MemberSpec, settings: MemberSettings) -> Arc<Registry> {
        let own = Arc::new(Member::start(local.clone(), settings.clone()));
        Arc::new(Registry {
            members: ArcSwap::from_pointee(BTreeMap::from([(local.name.clone(), own)])),
            rejected: ArcSwap::from_pointee(Vec::new()),
            local,
            settings,
        })
    }

    /// The own cluster's name.
    pub(crate) fn local_name(&self) -> &str {
        &self.local.name
    }

    /// Current members by name.
    pub(crate) fn members(&self) -> Arc<BTreeMap<String, Arc<Member>>> {
        self.members.load_full()
    }

    /// Registrations that were rejected (bad name, no or refused kubeconfig, conflict).
    pub(crate) fn rejected(&self) -> Arc<Vec<Rejected>> {
        self.rejected.load_full()
    }

    /// Recomputes the member set from the registration Secrets.
    pub(crate) fn sync(&self, secrets: &[Arc<Secret>]) {
        let (desired, rejected) = self.claims(secrets);
        for r in &rejected {
            warn!(cluster = %r.name, secret = %r.secret, phase = %r.phase, reason = %r.reason, "registration rejected");
        }
        let next = self.next_members(desired);
        self.settings.metrics.members.set(next.len() as i64);
        for phase in [Phase::InvalidCredentials, Phase::Conflict] {
            let n = rejected.iter().filter(|r| r.phase == phase).count();
            self.settings.metrics.set_rejected(phase, n);
        }
        // Dropping the last Arc of a removed member aborts its tasks.
        self.members.store(Arc::new(next));
        self.rejected.store(Arc::new(rejected));
        self.settings.notify.notify_one();
    }

    /// The member each Secret registers, or why it does not. Oldest first: a name belongs
    /// to the Secret that claimed it first, so creating a Secret can never take a member
    /// over. Equal times (one-second resolution) are broken by Secret name.
    fn claims(&self, secrets: &[Arc<Secret>]) -> (BTreeMap<String, MemberSpec>, Vec<Rejected>) {
        let mut sorted: Vec<&Arc<Secret>> = secrets.iter().collect();
        sorted.sort_by(|a, b| {
            let created = |s: &Secret| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        let mut desired: BTreeMap<String, MemberSpec> = BTreeMap::new();
        let mut rejected = Vec::new();
        for s in sorted {
            let name = claimed_name(s);
            if let Some(reason) = self.conflict(&name, owners.get(&name)) {
                rejected.push(Rejected {
                    report_as: report_name(&name, &s.name_any()),
                    name,
                    secret: secret_ref(s),
                    phase: Phase::Conflict,
                    reason,
                });
                continue;
            }
            if is_dns_label(&name) {
                owners.insert(name, secret_ref(s));
            }
            match spec_from_secret(s) {
                Ok(spec) => {
                    desired.insert(spec.name.clone(), spec);
                }
                Err(r) => rejected.push(r),
            }
        }
        (desired, rejected)
    }

    /// Why a Secret may not claim `name`: it is the own cluster's, or `owner` (an older
    /// Secret) has it.
    fn conflict(&self, name: &str, owner: Option<&String>) -> Option<String> {
        if name == self.local.name {
            return Some(format!(
                "cluster {name:?} is the controller's own cluster, which is always a member; \
                 this Secret is ignored"
            ));
        }
        owner.map(|owner| {
            format!(
                "cluster {name:?} is already registered by Secret {owner} (older); this Secret \
                 is ignored until that one is deleted"
            )
        })
    }

    /// The next member set: the own cluster, unchanged members as they run, changed and new
    /// ones started.
    fn next_members(&self, desired: BTreeMap<String, MemberSpec>) -> BTreeMap<String, Arc<Member>> {
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
        next
    }

    /// Watches the registration Secrets of `namespace` and keeps the member set in sync.
    /// Runs until aborted.
    pub(crate) async fn run(self: Arc<Self>, client: Client, namespace: String) {
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
    use crate::members::kubeconfig::testing::{self, kubeconfig};
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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

    /// `secret` created `seconds` after the epoch.
    fn created(mut s: Secret, seconds: i64) -> Arc<Secret> {
        s.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap(),
        ));
        Arc::new(s)
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
            marks: crate::dirty::Marks::channel().0,
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
        let a = created(secret("a", None, Some(&kubeconfig("one"))), 1);
        let b = created(secret("b", Some("bee"), Some(&kubeconfig("two"))), 2);
        r.sync(&[a.clone(), b.clone()]);
        assert_eq!(names(&r), ["a", "bee", "home"]);
        let first_a = r.members()["a"].clone();

        // Unchanged Secret: same member. Changed kubeconfig: a new member.
        r.sync(&[a.clone(), b.clone()]);
        assert!(Arc::ptr_eq(&first_a, &r.members()["a"]));
        let a2 = created(secret("a", None, Some(&kubeconfig("one-rotated"))), 1);
        r.sync(&[a2.clone(), b.clone()]);
        assert!(!Arc::ptr_eq(&first_a, &r.members()["a"]));

        // Duplicates and the own name are rejected; the first registration stays.
        let dup = created(secret("c", Some("bee"), Some(&kubeconfig("three"))), 3);
        let own = created(secret("d", Some("home"), Some(&kubeconfig("four"))), 4);
        let bad = created(secret("e", None, None), 5);
        r.sync(&[a2.clone(), b.clone(), dup, own, bad]);
        assert_eq!(names(&r), ["a", "bee", "home"]);
        assert_eq!(
            r.members()["bee"].spec.secret.as_deref(),
            Some("meridian-system/b")
        );
        let rejected: Vec<_> = r
            .rejected()
            .iter()
            .map(|x| (x.report_as.clone(), x.phase))
            .collect();
        assert_eq!(
            rejected,
            [
                ("bee.c".to_owned(), Phase::Conflict),
                ("home.d".to_owned(), Phase::Conflict),
                ("e".to_owned(), Phase::InvalidCredentials),
            ]
        );

        // Deleting a Secret removes its member; the own cluster always stays.
        r.sync(&[b]);
        assert_eq!(names(&r), ["bee", "home"]);
        r.sync(&[]);
        assert_eq!(names(&r), ["home"]);
    }

    /// A newer Secret claiming a registered name never replaces the member, even when its
    /// name sorts first; it is reported as a Conflict naming the owner.
    #[tokio::test]
    async fn the_oldest_secret_owns_a_cluster_name() {
        let r = registry();
        let owner = created(secret("west", None, Some(&kubeconfig("owner"))), 100);
        r.sync(std::slice::from_ref(&owner));
        let member = r.members()["west"].clone();

        let impostor = created(
            secret("a-impostor", Some("west"), Some(&kubeconfig("impostor"))),
            200,
        );
        r.sync(&[owner.clone(), impostor.clone()]);
        assert!(
            Arc::ptr_eq(&member, &r.members()["west"]),
            "the member is untouched"
        );
        let rejected = r.rejected();
        let [conflict] = rejected.as_slice() else {
            panic!("{rejected:?}");
        };
        assert_eq!(conflict.phase, Phase::Conflict);
        assert_eq!(conflict.report_as, "west.a-impostor");
        assert_eq!(conflict.secret, "meridian-system/a-impostor");
        assert!(
            conflict
                .reason
                .contains("already registered by Secret meridian-system/west"),
            "{conflict:?}"
        );

        // An invalid owner still owns the name: breaking a Secret hands nothing over.
        let broken = created(secret("west", None, Some("exec: {command: sh}")), 100);
        r.sync(&[broken, impostor.clone()]);
        assert!(!r.members().contains_key("west"));
        let phases: Vec<_> = r
            .rejected()
            .iter()
            .map(|x| (x.report_as.clone(), x.phase))
            .collect();
        assert_eq!(
            phases,
            [
                ("west".to_owned(), Phase::InvalidCredentials),
                ("west.a-impostor".to_owned(), Phase::Conflict),
            ]
        );

        let metrics = r.settings.metrics.render();
        assert!(
            metrics.contains(r#"meridian_registrations_rejected{phase="Conflict"} 1"#),
            "{metrics}"
        );

        // Once the owner is deleted, the next oldest takes the name over.
        r.sync(&[impostor]);
        assert_eq!(
            r.members()["west"].spec.secret.as_deref(),
            Some("meridian-system/a-impostor")
        );
        assert!(r.rejected().is_empty());

        // Equal creation times (one-second resolution): the Secret name decides.
        let x = created(secret("x", Some("tie"), Some(&kubeconfig("x"))), 300);
        let y = created(secret("y", Some("tie"), Some(&kubeconfig("y"))), 300);
        r.sync(&[y, x]);
        assert_eq!(
            r.members()["tie"].spec.secret.as_deref(),
            Some("meridian-system/x")
        );
    }

    #[test]
    fn secrets_become_specs() {
        let text = kubeconfig(testing::TOKEN);
        let spec = spec_from_secret(&secret("east", None, Some(&text))).unwrap();
        assert_eq!(spec.name, "east");
        assert_eq!(spec.secret.as_deref(), Some("meridian-system/east"));
        assert_eq!(
            spec_from_secret(&secret("x", Some("west"), Some(&text)))
                .unwrap()
                .name,
            "west"
        );
        let r = spec_from_secret(&secret("x", None, None)).unwrap_err();
        assert!(r.reason.contains("kubeconfig"), "{r:?}");
        let r = spec_from_secret(&secret("x", Some("Bad_Name"), Some(&text))).unwrap_err();
        assert!(r.reason.contains("DNS label"), "{r:?}");
        assert_eq!(r.report_as, "invalid-name.x");
        // Debug output never carries the kubeconfig.
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains(testing::TOKEN), "{dbg}");
    }

    #[test]
    fn refused_kubeconfigs_name_the_field() {
        let text = testing::edited(|v| {
            testing::set(&mut v["users"][0]["user"], "exec", "{command: /bin/sh}");
        });
        let r = spec_from_secret(&secret("east", None, Some(&text))).unwrap_err();
        assert_eq!(r.phase, Phase::InvalidCredentials);
        assert_eq!(r.report_as, "east");
        assert!(
            r.reason
                .starts_with("registration kubeconfig refused: users[0].user.exec: exec"),
            "{r:?}"
        );
        assert!(!r.reason.contains(testing::TOKEN), "{r:?}");

        // `meridian.io/context` picks one of several contexts.
        let two = testing::edited(|v| {
            let contexts = v["contexts"].as_sequence_mut().unwrap();
            let mut other = contexts[0].clone();
            other["name"] = "other".into();
            contexts.push(other);
        });
        let mut s = secret("east", None, Some(&two));
        assert!(spec_from_secret(&s).is_err());
        s.metadata
            .annotations
            .get_or_insert_default()
            .insert(CONTEXT_ANNOTATION.into(), "other".into());
        spec_from_secret(&s).unwrap();
    }

    #[test]
    fn report_names_stay_dns_subdomains() {
        assert_eq!(report_name("west", "cluster-west"), "west.cluster-west");
        let long = "s".repeat(253);
        let n = report_name("west", &long);
        assert!(n.len() <= 253 && n.starts_with("west.sss"), "{n}");
        assert_ne!(n, report_name("west", &"s".repeat(252)));
    }
}

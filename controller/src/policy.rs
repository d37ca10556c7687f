//! GlobalTrafficPolicy handling: which policy is in force for each service, and the
//! reconciler that reports it in the policy's status.
//!
//! What a schema cannot check (weights summing to 100, unknown subsets, locality syntax…) is
//! checked by the api crate's `TrafficPolicy::validate`. An invalid generation gets
//! `Accepted=False` with the reason, and the last accepted version (kept in the status, so it
//! survives restarts) stays in force. When several policies target one Service, the oldest
//! wins and the others are `Accepted=False, reason Conflicted`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use meridian_api::TrafficPolicy;
use tokio::sync::{Notify, watch};
use tracing::{field, info, instrument, warn};

use crate::catalog::ServiceKey;
use crate::crd::{GlobalTrafficPolicy, GlobalTrafficPolicyStatus};
use crate::metrics::Metrics;
use crate::vip::FIELD_MANAGER;
use crate::{Error, Result};

/// A policy in force for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInForce {
    /// Name of the GlobalTrafficPolicy.
    pub name: String,
    /// Its accepted generation.
    pub generation: Option<i64>,
    /// The accepted spec.
    pub policy: TrafficPolicy,
}

/// The verdict on one GlobalTrafficPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The current generation is valid and in force.
    Accepted,
    /// The current generation is invalid; the reason names the field.
    Invalid(String),
    /// Another, older policy targets the same Service.
    Conflicted(String),
}

impl Verdict {
    /// The condition reasons of a rejected policy (metric labels).
    pub(crate) const REJECTIONS: [&'static str; 2] = ["Invalid", "Conflicted"];

    /// Its `Accepted` condition's reason when rejected.
    pub(crate) fn rejection(&self) -> Option<&'static str> {
        match self {
            Verdict::Accepted => None,
            Verdict::Invalid(_) => Some(Self::REJECTIONS[0]),
            Verdict::Conflicted(_) => Some(Self::REJECTIONS[1]),
        }
    }
}

/// The rejection reason of every policy in `all` that is not in force as written.
pub fn rejections(all: &[Arc<GlobalTrafficPolicy>]) -> Vec<&'static str> {
    all.iter()
        .filter_map(|gtp| verdict(gtp, all).rejection())
        .collect()
}

fn key_of(gtp: &GlobalTrafficPolicy) -> ServiceKey {
    ServiceKey::new(
        gtp.namespace().unwrap_or_default(),
        gtp.spec.service.clone(),
    )
}

/// Oldest first, then by name: the winner of a conflict.
fn precedence(gtp: &GlobalTrafficPolicy) -> (Option<Timestamp>, String) {
    (
        gtp.metadata.creation_timestamp.as_ref().map(|t| t.0),
        gtp.name_any(),
    )
}

/// The verdict on `gtp` given every policy in the cluster.
pub(crate) fn verdict(gtp: &GlobalTrafficPolicy, all: &[Arc<GlobalTrafficPolicy>]) -> Verdict {
    let key = key_of(gtp);
    if let Some(winner) = all
        .iter()
        .filter(|o| key_of(o) == key)
        .min_by_key(|o| precedence(o))
        && winner.name_any() != gtp.name_any()
    {
        return Verdict::Conflicted(format!(
            "GlobalTrafficPolicy {:?} already targets Service {:?}",
            winner.name_any(),
            gtp.spec.service
        ));
    }
    match gtp.spec.policy.validate() {
        Ok(()) => Verdict::Accepted,
        Err(e) => Verdict::Invalid(e.to_string()),
    }
}

/// The policy in force per service: the winner's current spec when valid, else its last
/// accepted spec from status, else none.
pub fn in_force(all: &[Arc<GlobalTrafficPolicy>]) -> BTreeMap<ServiceKey, PolicyInForce> {
    let mut out = BTreeMap::new();
    for gtp in all {
        let accepted = match verdict(gtp, all) {
            Verdict::Conflicted(_) => continue,
            Verdict::Accepted => Some((gtp.metadata.generation, gtp.spec.policy.clone())),
            Verdict::Invalid(_) => gtp
                .status
                .as_ref()
                .and_then(|s| s.accepted.clone().map(|p| (s.accepted_generation, p))),
        };
        if let Some((generation, policy)) = accepted {
            out.insert(
                key_of(gtp),
                PolicyInForce {
                    name: gtp.name_any(),
                    generation,
                    policy,
                },
            );
        }
    }
    out
}

/// Sets a condition, keeping its transition time when the status did not change.
pub(crate) fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

/// A condition stamped now.
pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// State the policy reconciler needs.
pub(crate) struct Context {
    /// The own cluster's client.
    pub client: Client,
    /// Every GlobalTrafficPolicy (the controller's store).
    pub store: Store<GlobalTrafficPolicy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads (only the leader writes status).
    pub leader: watch::Receiver<bool>,
}

/// The status `gtp` should have.
pub fn desired_status(
    gtp: &GlobalTrafficPolicy,
    all: &[Arc<GlobalTrafficPolicy>],
) -> GlobalTrafficPolicyStatus {
    let mut status = gtp.status.clone().unwrap_or_default();
    let generation = gtp.metadata.generation;
    status.observed_generation = generation;
    let cond = match verdict(gtp, all) {
        Verdict::Accepted => {
            status.accepted = Some(gtp.spec.policy.clone());
            status.accepted_generation = generation;
            condition(
                "Accepted",
                true,
                "Accepted",
                "policy is in force".into(),
                generation,
            )
        }
        Verdict::Invalid(reason) => {
            let kept = match status.accepted_generation {
                Some(g) => format!("; generation {g} stays in force"),
                None => String::new(),
            };
            condition(
                "Accepted",
                false,
                "Invalid",
                format!("{reason}{kept}"),
                generation,
            )
        }
        Verdict::Conflicted(reason) => {
            status.accepted = None;
            status.accepted_generation = None;
            condition("Accepted", false, "Conflicted", reason, generation)
        }
    };
    set_condition(&mut status.conditions, cond);
    status
}

/// Writes the status of one GlobalTrafficPolicy.
#[instrument(skip(gtp, ctx), fields(policy = %gtp.name_any(), namespace = field::Empty))]
pub(crate) async fn reconcile(gtp: Arc<GlobalTrafficPolicy>, ctx: Arc<Context>) -> Result<Action> {
    if !*ctx.leader.borrow() {
        // Every policy is reconciled again when this replica becomes the leader.
        return Ok(Action::await_change());
    }
    ctx.metrics.reconciled("policy");
    let ns = gtp
        .namespace()
        .ok_or_else(|| Error::InvalidObject("GlobalTrafficPolicy without namespace".into()))?;
    tracing::Span::current().record("namespace", field::display(&ns));
    let all = ctx.store.state();
    let status = desired_status(&gtp, &all);
    if gtp.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Accepted") {
        info!(accepted = %c.status, reason = %c.reason, message = %c.message, "policy status");
    }
    let api: Api<GlobalTrafficPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = Patch::Apply(serde_json::json!({
        "apiVersion": "meridian.io/v1alpha1",
        "kind": "GlobalTrafficPolicy",
        "status": status,
    }));
    api.patch_status(
        &gtp.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &patch,
    )
    .await?;
    Ok(Action::await_change())
}

/// Counts the failure and retries later.
pub(crate) fn error_policy(
    gtp: Arc<GlobalTrafficPolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(policy = %gtp.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed("policy", error);
    Action::requeue(Duration::from_secs(5))
}

/// Runs the policy controller over every namespace of the own cluster. Returns its store
/// (read by the aggregator) and the future to drive; `notify` is poked on every change,
/// deletions included. Status is written only while `leader` is true; becoming the leader
/// reconciles every policy.
pub(crate) fn controller(
    client: Client,
    metrics: Arc<Metrics>,
    notify: Arc<Notify>,
    leader: watch::Receiver<bool>,
) -> (
    Store<GlobalTrafficPolicy>,
    impl std::future::Future<Output = ()>,
) {
    let api: Api<GlobalTrafficPolicy> = Api::all(client.clone());
    let gained = tokio_stream::wrappers::WatchStream::new(leader.clone())
        .filter_map(|leads| futures::future::ready(leads.then_some(())));
    let controller =
        Controller::new(api.clone(), watcher::Config::default()).reconcile_all_on(gained);
    let reader = controller.store();
    // The controller does not reconcile deletions; a plain watch pokes the aggregator on
    // every change, deletions included.
    let changes = watcher(api, watcher::Config::default())
        .backoff(kube::runtime::watcher::ExponentialBackoff::from(
            crate::members::member::reconnect_backoff(),
        ))
        .for_each(move |_| {
            notify.notify_one();
            futures::future::ready(())
        });
    let ctx = Arc::new(Context {
        client,
        store: reader.clone(),
        metrics,
        leader,
    });
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "policy controller event");
            }
        });
    let fut = async move {
        futures::future::join(run, changes).await;
    };
    (reader, fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::GlobalTrafficPolicySpec;

    fn gtp(name: &str, service: &str, json: &str, age: i64) -> Arc<GlobalTrafficPolicy> {
        let mut g = GlobalTrafficPolicy::new(
            name,
            GlobalTrafficPolicySpec {
                service: service.into(),
                policy: serde_json::from_str(json).unwrap(),
            },
        );
        g.metadata.namespace = Some("demo".into());
        g.metadata.generation = Some(1);
        g.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_000_000 + age).unwrap()));
        Arc::new(g)
    }

    #[test]
    fn invalid_generation_keeps_last_accepted() {
        let good = gtp("p", "echo", r#"{"panicThreshold":40}"#, 0);
        let all = vec![good.clone()];
        let st = desired_status(&good, &all);
        assert_eq!(st.accepted_generation, Some(1));
        assert_eq!(st.conditions[0].status, "True");

        // Generation 2 is invalid: weights sum to 90.
        let mut bad = (*gtp(
            "p",
            "echo",
            r#"{"localityLbSetting":{"distribute":[{"from":"eu","to":{"eu":40,"us":50}}]}}"#,
            0,
        ))
        .clone();
        bad.metadata.generation = Some(2);
        bad.status = Some(st);
        let bad = Arc::new(bad);
        let all = vec![bad.clone()];
        let st = desired_status(&bad, &all);
        let c = &st.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert!(c.message.contains("weights sum to 90"), "{}", c.message);
        assert!(
            c.message.contains("generation 1 stays in force"),
            "{}",
            c.message
        );
        assert_eq!(st.observed_generation, Some(2));
        let force = in_force(&all);
        let p = &force[&ServiceKey::new("demo", "echo")];
        assert_eq!(p.generation, Some(1));
        assert_eq!(p.policy.panic_threshold, Some(40));
    }

    #[test]
    fn oldest_policy_wins_a_conflict() {
        let old = gtp("old", "echo", "{}", 0);
        let new = gtp("new", "echo", r#"{"panicThreshold":10}"#, 5);
        let all = vec![new.clone(), old.clone()];
        assert_eq!(verdict(&old, &all), Verdict::Accepted);
        assert!(matches!(verdict(&new, &all), Verdict::Conflicted(_)));
        let force = in_force(&all);
        assert_eq!(force.len(), 1);
        assert_eq!(force[&ServiceKey::new("demo", "echo")].name, "old");
    }
}

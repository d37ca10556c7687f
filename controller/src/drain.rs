//! Member drains (`MemberCluster.spec.drain`): what each drain's ramp stands at now, for the
//! snapshot and for the members' status.
//!
//! The `MemberCluster` objects are written by this controller (status, and `local`/`secret`
//! in the spec) but `spec.drain` belongs to the user (`meridianctl cluster drain`): it is
//! only read here, from a reflector the aggregator wakes on.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use meridian_crd::drain::{self, DRAINED};

use crate::crd::MemberCluster;

/// The ramp is recomputed at least this often while a drain ramps.
pub(crate) const STEP: Duration = Duration::from_secs(1);

/// One member's drain as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DrainState {
    /// Ramping or done: progress in permille.
    Progress(u32),
    /// `spec.drain` cannot be applied; the text names the field.
    Invalid(String),
}

impl DrainState {
    /// `status.drain` and `status.drainPermille`.
    pub(crate) fn status(&self) -> (String, Option<u32>) {
        match self {
            DrainState::Progress(p) => (drain::describe(*p), Some(*p)),
            DrainState::Invalid(why) => (format!("Invalid: {why}"), None),
        }
    }
}

/// Every drain at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Drains {
    /// Per member with a `spec.drain`.
    pub(crate) members: BTreeMap<String, DrainState>,
    /// What the snapshot carries: the progress per cluster for callers in `local`'s cluster
    /// (the own cluster only when its drain includes local callers; refused drains never).
    pub(crate) for_snapshot: BTreeMap<String, u32>,
    /// When the next ramp step is due, while some drain ramps.
    pub(crate) next_step: Option<Duration>,
}

impl Drains {
    /// The drains of `objects` at `now`, seen from the cluster `local`.
    pub(crate) fn at<'a>(
        objects: impl IntoIterator<Item = &'a MemberCluster>,
        local: &str,
        now: SystemTime,
    ) -> Self {
        let mut out = Drains::default();
        for mc in objects {
            let Some(d) = mc.spec.drain.as_ref() else {
                continue;
            };
            let name = mc.name_any();
            let state = match d.permille_at(now) {
                Ok(p) => {
                    if p < DRAINED
                        && let Some(left) = d.remaining_at(now)
                    {
                        let step = left.min(STEP);
                        out.next_step = Some(out.next_step.map_or(step, |s| s.min(step)));
                    }
                    // Callers inside the drained cluster keep being served locally
                    // unless the drain includes them.
                    if name != local || d.include_local {
                        out.for_snapshot.insert(name.clone(), p);
                    }
                    DrainState::Progress(p)
                }
                Err(e) => DrainState::Invalid(e.to_string()),
            };
            out.members.insert(name, state);
        }
        out
    }

    /// [`Drains::at`] over the reflector's objects.
    pub(crate) fn of(store: &Store<MemberCluster>, local: &str, now: SystemTime) -> Self {
        let objects = store.state();
        Self::at(objects.iter().map(AsRef::as_ref), local, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberClusterSpec;
    use meridian_crd::drain::Drain;

    fn member(name: &str, drain: Option<Drain>) -> MemberCluster {
        MemberCluster::new(
            name,
            MemberClusterSpec {
                drain,
                ..MemberClusterSpec::default()
            },
        )
    }

    #[test]
    fn progress_per_member_and_the_next_step() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let objects = [
            member("east", None),
            member(
                "west",
                Some(Drain::starting(t0, Duration::from_secs(10), false)),
            ),
            member("far", Some(Drain::starting(t0, Duration::ZERO, false))),
        ];
        let d = Drains::at(&objects, "east", t0 + Duration::from_millis(4_500));
        assert_eq!(
            d.for_snapshot,
            BTreeMap::from([("far".to_owned(), 1000), ("west".to_owned(), 450)])
        );
        assert_eq!(
            d.members["west"].status(),
            ("Draining 45%".to_owned(), Some(450))
        );
        assert_eq!(
            d.members["far"].status(),
            ("Drained".to_owned(), Some(1000))
        );
        assert_eq!(d.next_step, Some(STEP));
        // The last step lands exactly on the end of the ramp, then no more wake-ups.
        let d = Drains::at(&objects, "east", t0 + Duration::from_millis(9_600));
        assert_eq!(d.next_step, Some(Duration::from_millis(400)));
        let d = Drains::at(&objects, "east", t0 + Duration::from_secs(10));
        assert_eq!(d.for_snapshot["west"], 1000);
        assert_eq!(d.next_step, None);
    }

    #[test]
    fn own_cluster_drain_applies_to_local_callers_only_when_asked() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let keep = [member(
            "east",
            Some(Drain::starting(t0, Duration::ZERO, false)),
        )];
        let d = Drains::at(&keep, "east", t0);
        assert!(d.for_snapshot.is_empty());
        assert_eq!(d.members["east"], DrainState::Progress(1000));
        // Another controller sees the same drain as applying to its callers.
        assert_eq!(Drains::at(&keep, "west", t0).for_snapshot["east"], 1000);
        let include = [member(
            "east",
            Some(Drain::starting(t0, Duration::ZERO, true)),
        )];
        assert_eq!(Drains::at(&include, "east", t0).for_snapshot["east"], 1000);
    }

    #[test]
    fn a_bad_start_time_is_reported_and_not_applied() {
        let objects = [member(
            "west",
            Some(Drain {
                started_at: "soon".into(),
                ..Drain::default()
            }),
        )];
        let d = Drains::at(&objects, "east", SystemTime::now());
        assert!(d.for_snapshot.is_empty());
        assert_eq!(
            d.members["west"].status(),
            (
                "Invalid: spec.drain.startedAt \"soon\" is not an RFC 3339 time".to_owned(),
                None
            )
        );
    }
}

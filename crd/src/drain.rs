//! Draining a member cluster for maintenance: `MemberCluster.spec.drain`.
//!
//! A drain ramps linearly from `startedAt` over `overSeconds`: its progress `p` goes from 0
//! to 1, and the locality engine multiplies the drained cluster's weight by `1 - p`
//! (`docs/concepts.md`). Progress is counted in permille so the snapshot carries an
//! integer and every component computes the same split.

use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Progress of a finished drain, in permille.
pub const DRAINED: u32 = 1000;

/// A drain of one member cluster, set by `meridianctl cluster drain` (absent: not drained).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// When the ramp started, RFC 3339 (e.g. `2026-11-27T14:00:00Z`).
    pub started_at: String,
    /// Length of the linear ramp in seconds; 0 drains at once.
    #[serde(default)]
    pub over_seconds: u64,
    /// Also move callers inside the drained cluster away from it (by default they keep
    /// being served locally).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_local: bool,
}

/// Why a drain cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// `startedAt` is not an RFC 3339 time.
    #[error("spec.drain.startedAt {0:?} is not an RFC 3339 time")]
    StartedAt(String),
}

impl Drain {
    /// A drain starting at `started` and ramping over `over` (whole seconds).
    pub fn starting(started: SystemTime, over: Duration, include_local: bool) -> Self {
        let started_at = Timestamp::try_from(started)
            .map(|t| t.to_string())
            .unwrap_or_default();
        Self {
            started_at,
            over_seconds: over.as_secs(),
            include_local,
        }
    }

    /// When the ramp started.
    pub fn started(&self) -> Result<SystemTime, DrainError> {
        let t: Timestamp = self
            .started_at
            .parse()
            .map_err(|_| DrainError::StartedAt(self.started_at.clone()))?;
        Ok(SystemTime::from(t))
    }

    /// Progress at `now` in permille: 0 before and at `startedAt`, [`DRAINED`] from
    /// `startedAt + overSeconds` on, linear (rounded down) in between.
    pub fn permille_at(&self, now: SystemTime) -> Result<u32, DrainError> {
        let started = self.started()?;
        let elapsed = now.duration_since(started).unwrap_or_default();
        Ok(ramp(elapsed, Duration::from_secs(self.over_seconds)))
    }

    /// How long after `now` the ramp ends; `None` once it has ended (or for a bad time).
    pub fn remaining_at(&self, now: SystemTime) -> Option<Duration> {
        let started = self.started().ok()?;
        let end = started.checked_add(Duration::from_secs(self.over_seconds))?;
        end.duration_since(now).ok().filter(|d| !d.is_zero())
    }
}

/// `min(1000, 1000 · elapsed / over)`, rounded down; a zero-length ramp is done at once.
fn ramp(elapsed: Duration, over: Duration) -> u32 {
    if over.is_zero() {
        return DRAINED;
    }
    let permille = elapsed.as_millis() * u128::from(DRAINED) / over.as_millis().max(1);
    permille.min(u128::from(DRAINED)) as u32
}

/// The status text of a drain at `permille`: `Draining 40%`, or `Drained`.
pub fn describe(permille: u32) -> String {
    if permille >= DRAINED {
        "Drained".to_owned()
    } else {
        format!("Draining {}%", permille / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_from_start_to_end() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = Drain::starting(start, Duration::from_secs(10), false);
        assert_eq!(d.started_at, "2027-01-15T08:00:00Z");
        assert_eq!(d.started().unwrap(), start);
        let at = |ms: u64| d.permille_at(start + Duration::from_millis(ms)).unwrap();
        assert_eq!(at(0), 0);
        assert_eq!(at(4_000), 400);
        assert_eq!(at(4_999), 499);
        assert_eq!(at(10_000), 1000);
        assert_eq!(at(60_000), 1000);
        assert_eq!(d.permille_at(start - Duration::from_secs(5)).unwrap(), 0);
        assert_eq!(
            d.remaining_at(start + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(d.remaining_at(start + Duration::from_secs(10)), None);
        let now = Drain::starting(start, Duration::ZERO, true);
        assert_eq!(now.permille_at(start).unwrap(), 1000);
    }

    #[test]
    fn describes_progress() {
        assert_eq!(describe(0), "Draining 0%");
        assert_eq!(describe(409), "Draining 40%");
        assert_eq!(describe(999), "Draining 99%");
        assert_eq!(describe(1000), "Drained");
    }

    #[test]
    fn a_bad_start_time_is_refused_with_the_field() {
        let d = Drain {
            started_at: "yesterday".into(),
            ..Drain::default()
        };
        let e = d.permille_at(SystemTime::now()).unwrap_err();
        assert_eq!(e, DrainError::StartedAt("yesterday".into()));
        assert_eq!(
            e.to_string(),
            "spec.drain.startedAt \"yesterday\" is not an RFC 3339 time"
        );
    }
}

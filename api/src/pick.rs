//! Choosing an endpoint per connection or request from a computed [`Split`].
//!
//! [`Balance::new`] groups endpoints, computes the split once and lays the endpoint ids out
//! flat (healthy ones first in each group). [`Picker::pick`] then costs one random number, a
//! binary search over the groups and one more random number, and never allocates; inputs
//! change rarely (a new snapshot, an ejection), so the split is recomputed only then.

use std::collections::BTreeMap;

use rand::Rng;

use crate::locality::Locality;
use crate::policy::TrafficPolicy;
use crate::split::{self, Caller, Group, Split};

/// What the balancer needs to know about one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    /// Where it runs.
    pub locality: &'a Locality,
    /// Its pod labels (read under `failoverPriority`).
    pub labels: &'a BTreeMap<String, String>,
    /// Ready and not ejected.
    pub healthy: bool,
    /// Drain progress of its cluster in permille ([`Group::drain`]); 0 when not drained.
    pub drain: u32,
}

/// One group's slice of [`Picker::ids`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Cumulative percent up to and including this group.
    cumulative: f64,
    start: u32,
    healthy: u32,
    len: u32,
    panic: bool,
}

/// A precomputed, allocation-free endpoint chooser.
#[derive(Debug, Clone, Default)]
pub struct Picker {
    slots: Vec<Slot>,
    ids: Vec<u32>,
}

impl Picker {
    /// Builds a picker from a split over `groups`, where `members[g]` lists the endpoint ids
    /// of group `g` with their health.
    pub fn new(split: &Split, members: &[Vec<(u32, bool)>]) -> Self {
        let mut slots = Vec::new();
        let mut ids = Vec::new();
        let mut cumulative = 0.0;
        for (share, eps) in split.groups.iter().zip(members) {
            if share.percent <= 0.0 || eps.is_empty() {
                continue;
            }
            let start = ids.len() as u32;
            ids.extend(eps.iter().filter(|(_, h)| *h).map(|(id, _)| *id));
            let healthy = ids.len() as u32 - start;
            ids.extend(eps.iter().filter(|(_, h)| !*h).map(|(id, _)| *id));
            if healthy == 0 && !share.panic {
                // Nothing choosable (only possible with zero-weight corner cases).
                ids.truncate(start as usize);
                continue;
            }
            cumulative += share.percent;
            slots.push(Slot {
                cumulative,
                start,
                healthy,
                len: eps.len() as u32,
                panic: share.panic,
            });
        }
        Self { slots, ids }
    }

    /// Whether no endpoint can be chosen.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Chooses an endpoint id: a group by its percent, then uniformly among the group's
    /// healthy endpoints (all of them when its priority is in panic).
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<u32> {
        let total = self.slots.last()?.cumulative;
        let r = rng.random::<f64>() * total;
        let i = self
            .slots
            .partition_point(|s| s.cumulative <= r)
            .min(self.slots.len() - 1);
        let s = self.slots[i];
        let n = if s.panic { s.len } else { s.healthy };
        Some(self.ids[(s.start + rng.random_range(0..n)) as usize])
    }

    /// Like [`Picker::pick`], but avoids the ids in `tried` (retries go to the next choice).
    /// Falls back to the first untried endpoint in priority order; `None` when all are tried.
    pub fn pick_excluding<R: Rng + ?Sized>(&self, rng: &mut R, tried: &[u32]) -> Option<u32> {
        for _ in 0..8 {
            let id = self.pick(rng)?;
            if !tried.contains(&id) {
                return Some(id);
            }
        }
        self.slots.iter().find_map(|s| {
            let n = if s.panic { s.len } else { s.healthy };
            self.ids[s.start as usize..(s.start + n) as usize]
                .iter()
                .copied()
                .find(|id| !tried.contains(id))
        })
    }
}

/// Endpoints grouped for the engine, the split for one caller, and a picker over it.
#[derive(Debug, Clone)]
pub struct Balance {
    /// The groups the split was computed over.
    pub groups: Vec<Group>,
    /// The split, one share per group.
    pub split: Split,
    /// Chooses endpoint indices (into the slice given to [`Balance::new`]).
    pub picker: Picker,
}

impl Balance {
    /// Groups `endpoints` by locality (and by the values of `failoverPriority` labels, and
    /// by drain progress, so a drained cluster's endpoints never share a group), computes the split for `caller` and builds the picker. Picked ids index `endpoints`.
    pub fn new(caller: &Caller, policy: &TrafficPolicy, endpoints: &[EndpointView<'_>]) -> Self {
        let keys: Vec<String> = policy
            .locality_lb_setting
            .as_ref()
            .map(|lb| lb.failover_priority.clone())
            .unwrap_or_default();
        let mut index: BTreeMap<(Locality, Vec<Option<String>>, u32), usize> = BTreeMap::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut members: Vec<Vec<(u32, bool)>> = Vec::new();
        for (id, ep) in endpoints.iter().enumerate() {
            let values: Vec<Option<String>> =
                keys.iter().map(|k| ep.labels.get(k).cloned()).collect();
            let g = *index
                .entry((ep.locality.clone(), values, ep.drain))
                .or_insert_with(|| {
                    let labels = keys
                        .iter()
                        .filter_map(|k| ep.labels.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    groups.push(Group {
                        locality: ep.locality.clone(),
                        labels,
                        drain: ep.drain,
                        ..Group::default()
                    });
                    members.push(Vec::new());
                    groups.len() - 1
                });
            groups[g].total += 1;
            groups[g].healthy += u32::from(ep.healthy);
            members[g].push((id as u32, ep.healthy));
        }
        let split = split::compute(caller, &groups, policy);
        let picker = Picker::new(&split, &members);
        Self {
            groups,
            split,
            picker,
        }
    }
}

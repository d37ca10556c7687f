//! Routing inside one service: HTTP routes choose a destination (a subset, by weight),
//! and each destination's locality-weighted balancer picks the endpoint.
//!
//! Built when the snapshot or the health of an endpoint changes, never per request: a
//! pick costs a couple of random numbers.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use meridian_api::pick::{Balance, EndpointView};
use meridian_api::policy::HttpMatch;
use meridian_api::split::Caller;
use rand::Rng;

use crate::routing::Service;

/// Where matching requests go: a subset of the service's endpoints and its balancer.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Subset name; `None` for every endpoint.
    pub subset: Option<String>,
    /// Endpoint indices (into the service's endpoints) in this destination.
    pub members: Vec<usize>,
    /// Split and picker over `members`.
    pub balance: Balance,
}

#[derive(Debug, Clone)]
struct Route {
    matches: Vec<HttpMatch>,
    /// (destination index, cumulative weight).
    targets: Vec<(usize, u32)>,
    timeout: Option<Duration>,
}

/// What routing decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into [`ServiceRoutes::destinations`].
    pub destination: usize,
    /// The matched route's response timeout, if it sets one.
    pub timeout: Option<Duration>,
}

/// A service's routes and balancers for the current health.
#[derive(Debug, Clone)]
pub struct ServiceRoutes {
    /// The service.
    pub service: Arc<Service>,
    /// Health of each endpoint as used here (ready, not ejected, peer up).
    pub healthy: Vec<bool>,
    /// Destinations; index 0 is always every endpoint.
    pub destinations: Vec<Destination>,
    routes: Vec<Route>,
}

impl ServiceRoutes {
    /// Builds routes and balancers for `caller` given each endpoint's health.
    pub fn build(service: Arc<Service>, caller: &Caller, healthy: Vec<bool>) -> Self {
        let mut destinations = vec![destination(&service, caller, &healthy, None)];
        let mut routes = Vec::new();
        for r in &service.policy.http {
            let mut cumulative = 0;
            let mut targets = Vec::new();
            for d in &r.route {
                let idx = match destinations.iter().position(|x| x.subset == d.subset) {
                    Some(i) => i,
                    None => {
                        destinations.push(destination(
                            &service,
                            caller,
                            &healthy,
                            d.subset.clone(),
                        ));
                        destinations.len() - 1
                    }
                };
                cumulative += d.weight.unwrap_or(if r.route.len() == 1 { 100 } else { 0 });
                targets.push((idx, cumulative));
            }
            routes.push(Route {
                matches: r.matches.clone(),
                targets,
                timeout: r.timeout(),
            });
        }
        Self {
            service,
            healthy,
            destinations,
            routes,
        }
    }

    /// The destination for a request (`None` headers: a TCP connection, which takes the
    /// default destination) and the matched route's timeout. First matching route wins,
    /// then a weighted choice.
    pub fn destination_for<R: Rng + ?Sized>(
        &self,
        headers: Option<&HeaderMap>,
        rng: &mut R,
    ) -> Choice {
        let default = Choice {
            destination: 0,
            timeout: None,
        };
        let Some(headers) = headers else {
            return default;
        };
        for r in &self.routes {
            let hit = r.matches.is_empty() || r.matches.iter().any(|m| matches(m, headers));
            if !hit {
                continue;
            }
            let total = r.targets.last().map_or(0, |t| t.1);
            let destination = if total == 0 {
                r.targets.first().map_or(0, |t| t.0)
            } else {
                let x = rng.random_range(0..total);
                r.targets.iter().find(|t| x < t.1).map_or(0, |t| t.0)
            };
            return Choice {
                destination,
                timeout: r.timeout,
            };
        }
        default
    }

    /// Picks an endpoint (index into the service's endpoints) of destination `dest`,
    /// avoiding those in `tried` when possible.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        dest: usize,
        rng: &mut R,
        tried: &[usize],
    ) -> Option<usize> {
        let d = self.destinations.get(dest)?;
        let local: Vec<u32> = tried
            .iter()
            .filter_map(|t| d.members.iter().position(|m| m == t).map(|p| p as u32))
            .collect();
        let id = if local.is_empty() {
            d.balance.picker.pick(rng)?
        } else {
            d.balance.picker.pick_excluding(rng, &local)?
        };
        d.members.get(id as usize).copied()
    }
}

fn matches(m: &HttpMatch, headers: &HeaderMap) -> bool {
    m.headers.iter().all(|(name, want)| {
        headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| want.matches(v))
    })
}

fn destination(
    service: &Service,
    caller: &Caller,
    healthy: &[bool],
    subset: Option<String>,
) -> Destination {
    let labels = subset.as_ref().and_then(|name| {
        service
            .policy
            .subsets
            .iter()
            .find(|s| &s.name == name)
            .map(|s| &s.labels)
    });
    let members: Vec<usize> = service
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|(i, _)| i)
        .collect();
    let views: Vec<EndpointView<'_>> = members
        .iter()
        .map(|&i| EndpointView {
            locality: &service.endpoints[i].locality,
            labels: &service.endpoints[i].labels,
            healthy: healthy[i],
            drain: service.endpoints[i].drain,
        })
        .collect();
    let balance = Balance::new(caller, &service.policy, &views);
    Destination {
        subset,
        members,
        balance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingTable;
    use meridian_api::proto::{Endpoint, GlobalService, Locality, Snapshot};

    fn reviews() -> Arc<Service> {
        let ep = |addr: &str, cluster: &str, zone: &str, version: &str| Endpoint {
            cluster: cluster.into(),
            address: addr.into(),
            locality: Some(Locality {
                region: "r1".into(),
                zone: zone.into(),
                subzone: String::new(),
            }),
            labels: [("version".to_string(), version.to_string())].into(),
            ready: true,
            ..Default::default()
        };
        let policy = r#"{"subsets":[{"name":"v1","labels":{"version":"v1"}},{"name":"v2","labels":{"version":"v2"}},{"name":"v3","labels":{"version":"v3"}}],
            "http":[{"match":[{"headers":{"end-user":{"exact":"jason"}}}],"route":[{"subset":"v2","weight":50},{"subset":"v3","weight":50}]},
                    {"route":[{"subset":"v1"}]}]}"#;
        let snap = Snapshot {
            cluster: "east".into(),
            services: vec![GlobalService {
                hostname: "reviews.default.global".into(),
                endpoints: vec![
                    ep("127.0.1.1", "east", "a", "v1"),
                    ep("127.0.2.1", "west", "b", "v2"),
                    ep("127.0.2.2", "west", "b", "v3"),
                ],
                policy_json: policy.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = RoutingTable::build("east", Arc::new(snap));
        c.services["reviews.default.global"].clone()
    }

    #[test]
    fn header_match_routes_to_weighted_subsets() {
        let svc = reviews();
        assert!(svc.policy_error.is_none(), "{:?}", svc.policy_error);
        let routes = ServiceRoutes::build(svc.clone(), &Caller::default(), vec![true; 3]);
        let mut rng = rand::rng();
        let mut jason = HeaderMap::new();
        jason.insert("end-user", "jason".parse().unwrap());
        let mut seen = [0usize; 3];
        for _ in 0..400 {
            let d = routes.destination_for(Some(&jason), &mut rng).destination;
            let ep = routes.pick(d, &mut rng, &[]).unwrap();
            seen[ep] += 1;
        }
        assert_eq!(seen[0], 0, "jason never reaches v1");
        assert!(
            seen[1] > 120 && seen[2] > 120,
            "v2/v3 about 50/50: {seen:?}"
        );
        for _ in 0..50 {
            let d = routes
                .destination_for(Some(&HeaderMap::new()), &mut rng)
                .destination;
            assert_eq!(routes.pick(d, &mut rng, &[]), Some(0), "everyone else → v1");
        }
        // TCP connections take the default destination: every endpoint.
        assert_eq!(routes.destination_for(None, &mut rng).destination, 0);
        assert_eq!(routes.destinations[0].members, vec![0, 1, 2]);
    }

    #[test]
    fn retries_avoid_tried_endpoints() {
        let routes = ServiceRoutes::build(reviews(), &Caller::default(), vec![true; 3]);
        let mut rng = rand::rng();
        for _ in 0..50 {
            let first = routes.pick(0, &mut rng, &[]).unwrap();
            let second = routes.pick(0, &mut rng, &[first]).unwrap();
            assert_ne!(first, second);
        }
    }
}

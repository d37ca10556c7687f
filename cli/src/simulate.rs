//! `meridianctl simulate`: the split for a hypothetical health state, computed by the same
//! engine the gateway uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use meridian_api::Locality;
use meridian_api::policy::{LocalityLbSetting, TrafficPolicy};
use meridian_api::split::{Caller, DRAINED, Group, compute};
use serde::Deserialize;

use crate::CliError;
use crate::render::{self, Output};

/// Arguments of `meridianctl simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenario file (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
}

/// A scenario file: a caller, optional policy fields and the health of each locality.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Scenario {
    /// `region/zone[/subzone]` of the caller.
    pub caller: String,
    /// Caller labels for `failoverPriority`.
    #[serde(default)]
    pub caller_labels: BTreeMap<String, String>,
    /// Percent, default 140.
    #[serde(default)]
    pub overprovisioning_factor: Option<u32>,
    /// Percent, default 50.
    #[serde(default)]
    pub panic_threshold: Option<u32>,
    /// Same schema as the policy field.
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Endpoint groups.
    pub localities: Vec<ScenarioLocality>,
}

/// One locality's endpoints in a scenario.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ScenarioLocality {
    /// `region/zone[/subzone]`.
    pub locality: String,
    /// Endpoints, ready or not.
    pub total: u32,
    /// Ready endpoints.
    pub healthy: u32,
    /// Locality weight (default: the endpoint count).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Labels shared by these endpoints, for `failoverPriority`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drain progress `p` of the cluster these endpoints run in, 0 to 1 (default 0): their
    /// weight is multiplied by `1 - p`, at 1 they get nothing (`meridianctl cluster drain`).
    #[serde(default)]
    pub drain: Option<f64>,
}

/// A scenario checked and turned into engine input.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The caller.
    pub caller: Caller,
    /// The groups, in file order.
    pub groups: Vec<Group>,
    /// The policy the scenario's fields make up.
    pub policy: TrafficPolicy,
}

fn bad(field: impl std::fmt::Display, reason: impl std::fmt::Display) -> CliError {
    CliError::BadInput(format!("{field}: {reason}"))
}

/// Parses YAML (or JSON, a subset of YAML) text into a scenario; errors name the field.
pub(crate) fn parse(text: &str) -> Result<Scenario, CliError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml_ng sometimes names the path itself; do not say it twice.
        if path == "." || inner.starts_with(&path) {
            CliError::BadInput(inner)
        } else {
            bad(path, inner)
        }
    })
}

impl Scenario {
    /// Checks everything the types cannot and builds the engine input.
    pub(crate) fn check(self) -> Result<Checked, CliError> {
        let locality: Locality = self.caller.parse().map_err(|e| bad("caller", e))?;
        let policy = TrafficPolicy {
            locality_lb_setting: self.locality_lb_setting,
            overprovisioning_factor: self.overprovisioning_factor,
            panic_threshold: self.panic_threshold,
            ..TrafficPolicy::default()
        };
        policy
            .validate()
            .map_err(|e| CliError::BadInput(e.to_string()))?;
        if self.localities.is_empty() {
            return Err(bad("localities", "needs at least one locality"));
        }
        let mut seen = BTreeSet::new();
        let mut groups = Vec::with_capacity(self.localities.len());
        for (i, l) in self.localities.into_iter().enumerate() {
            let field = |f: &str| format!("localities[{i}].{f}");
            let loc: Locality = l.locality.parse().map_err(|e| bad(field("locality"), e))?;
            if l.healthy > l.total {
                return Err(bad(
                    field("healthy"),
                    format!("{} exceeds total {}", l.healthy, l.total),
                ));
            }
            if let Some(w) = l.weight
                && !(w.is_finite() && w >= 0.0)
            {
                return Err(bad(
                    field("weight"),
                    format!("{w} must be a non-negative number"),
                ));
            }
            let drain = match l.drain {
                None => 0,
                Some(p) if p.is_finite() && (0.0..=1.0).contains(&p) => {
                    (p * f64::from(DRAINED)).round() as u32
                }
                Some(p) => {
                    return Err(bad(field("drain"), format!("{p} must be between 0 and 1")));
                }
            };
            // The same locality may appear once per drain state (e.g. two clusters).
            if !seen.insert((loc.clone(), l.labels.clone(), drain)) {
                return Err(bad(
                    field("locality"),
                    format!("{loc} is listed twice with the same labels"),
                ));
            }
            groups.push(Group {
                locality: loc,
                labels: l.labels,
                total: l.total,
                healthy: l.healthy,
                weight: l.weight,
                drain,
            });
        }
        Ok(Checked {
            caller: Caller {
                locality,
                labels: self.caller_labels,
            },
            groups,
            policy,
        })
    }
}

/// Runs `meridianctl simulate`.
pub(crate) fn run(args: &Args, output: Output) -> Result<(), CliError> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.file)
    }
    .map_err(|e| CliError::BadInput(format!("cannot read {}: {e}", args.file.display())))?;
    let checked = parse(&text)?.check()?;
    let split = compute(&checked.caller, &checked.groups, &checked.policy);
    match output {
        Output::Json | Output::Yaml => {
            render::print_structured(&render::split_json(&checked.groups, &split), output)?
        }
        Output::Table => {
            print!("{}", render::split_table(&checked.groups, &split));
            if !split.routable() {
                println!("no healthy endpoint: every request fails");
            }
        }
    }
    Ok(())
}

//! The projected tokens gateway and DNS send the controller.

use std::collections::{BTreeMap, BTreeSet};

use super::{Objects, name};

/// The audience of the tokens gateway and DNS send the controller (its --token-audience).
pub(crate) const CONTROLLER_AUDIENCE: &str = "meridian-controller";

/// Gateway and DNS send the controller a projected token for its audience, from the
/// file their --token-file (MERIDIAN_TOKEN_FILE) names.
pub(crate) fn controller_tokens(objects: &Objects, problems: &mut Vec<String>) {
    for d in &objects.deployments {
        let dname = name(d);
        if dname == "meridian-controller" {
            continue;
        }
        let owner = format!("Deployment {dname}");
        let Some(pod) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            continue;
        };
        // volume name → token path inside it.
        let tokens: BTreeMap<&str, &str> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let sources = v.projected.as_ref()?.sources.as_ref()?;
                sources.iter().find_map(|s| {
                    let t = s.service_account_token.as_ref()?;
                    (t.audience.as_deref() == Some(CONTROLLER_AUDIENCE)
                        && t.expiration_seconds.is_some())
                    .then_some((v.name.as_str(), t.path.as_str()))
                })
            })
            .collect();
        for c in &pod.containers {
            let files: BTreeSet<String> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|m| {
                    let path = tokens.get(m.name.as_str())?;
                    Some(format!("{}/{path}", m.mount_path.trim_end_matches('/')))
                })
                .collect();
            let configured: Vec<String> = c
                .args
                .iter()
                .flatten()
                .filter_map(|a| a.strip_prefix("--token-file=").map(str::to_owned))
                .chain(
                    c.env
                        .iter()
                        .flatten()
                        .filter(|e| e.name == "MERIDIAN_TOKEN_FILE")
                        .filter_map(|e| e.value.clone()),
                )
                .collect();
            if configured.is_empty() || !configured.iter().all(|f| files.contains(f)) {
                problems.push(format!(
                    "{owner}: --token-file {configured:?} is not a mounted projected token \
                         with audience {CONTROLLER_AUDIENCE} and expirationSeconds ({files:?})"
                ));
            }
        }
    }
}

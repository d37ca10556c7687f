//! `meridianctl status`: member clusters and global services at a glance.

use anyhow::Context as _;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use meridian_crd::{GlobalService, MemberCluster};
use serde::Serialize;

use crate::cluster::{member_header, member_row};
use crate::render::{self, Output};

#[derive(Serialize)]
struct Status {
    members: Vec<MemberCluster>,
    services: Vec<GlobalService>,
}

/// Runs `meridianctl status`.
pub(crate) async fn run(client: &Client, output: Output) -> anyhow::Result<()> {
    let mut members = Api::<MemberCluster>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing MemberClusters (is Meridian installed in this cluster?)")?
        .items;
    members.sort_by_key(|m| m.name_any());
    let mut services = Api::<GlobalService>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing GlobalServices")?
        .items;
    services.sort_by_key(|s| s.name_any());
    if output != Output::Table {
        return render::print_structured(&Status { members, services }, output);
    }
    println!("MEMBER CLUSTERS");
    print!(
        "{}",
        render::table(&member_header(), members.iter().map(member_row).collect())
    );
    println!("\nGLOBAL SERVICES");
    let header = [
        "HOSTNAME",
        "VIP",
        "PORTS",
        "READY/TOTAL BY LOCALITY",
        "POLICY",
    ];
    let rows = services
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let ports: Vec<String> = st
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            let localities: Vec<String> = st
                .localities
                .iter()
                .map(|l| format!("{} {}/{}", l.locality, l.ready, l.total))
                .collect();
            vec![
                if st.hostname.is_empty() {
                    s.name_any()
                } else {
                    st.hostname
                },
                st.vip.unwrap_or_else(|| "-".into()),
                ports.join(","),
                localities.join(", "),
                st.policy.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!("{}", render::table(&header, rows));
    Ok(())
}

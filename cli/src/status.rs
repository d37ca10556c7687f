//! `meridianctl status`: member clusters and global services at a glance.

use anyhow::Context as _;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use meridian_crd::{GlobalService, MemberCluster};
use serde::Serialize;

use crate::cluster::{member_header, member_row};
use crate::render::{self, Output};

/// Every object of the cluster-scoped kind `K`, sorted by name; a failure is reported as `what`.
async fn list_sorted<K>(client: &Client, what: &'static str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut items = Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context(what)?
        .items;
    items.sort_by_key(|o| o.name_any());
    Ok(items)
}

#[derive(Serialize)]
struct Status {
    members: Vec<MemberCluster>,
    services: Vec<GlobalService>,
}

/// Runs `meridianctl status`.
pub(crate) async fn run(client: &Client, output: Output) -> anyhow::Result<()> {
    let members: Vec<MemberCluster> = list_sorted(
        client,
        "listing MemberClusters (is Meridian installed in this cluster?)",
    )
    .await?;
    let services: Vec<GlobalService> = list_sorted(client, "listing GlobalServices").await?;
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

//! The testbed: several simulated clusters sharing one loopback block and temp directory.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use futures::future::try_join_all;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::apiserver;
use crate::binaries::Binaries;
use crate::cluster::{Cluster, ClusterSpec, MAX_CLUSTERS};
use crate::error::{Error, Result};
use crate::network::LoopbackBlock;

/// Environment variable choosing where testbed directories are created (default: the
/// system temp dir).
pub const TMPDIR_ENV: &str = "MERIDIAN_TESTBED_TMPDIR";

/// The kube-apiserver minor version the testbed targets (what the provisioning script builds).
const SUPPORTED_MINOR: u32 = 20;

/// Running simulated clusters. Dropping it (also while unwinding from a panic) kills every
/// process, stops every echo server and removes the directory.
#[derive(Debug)]
pub struct Testbed {
    // Field order is drop order: clusters (processes) before their directory and block.
    clusters: Vec<Cluster>,
    dir: TempDir,
    block: Arc<LoopbackBlock>,
}

impl Testbed {
    /// Starts one cluster per spec, concurrently, and returns when all are ready: API
    /// servers answering `/readyz`, the `meridian-system` namespace and the Node objects
    /// created. Fails loudly (naming the provisioning script) if the binaries are missing.
    pub async fn start(specs: &[ClusterSpec]) -> Result<Testbed> {
        let started = Instant::now();
        validate(specs)?;
        let binaries = Binaries::locate()?;
        let minor = apiserver::minor_version(&binaries.kube_apiserver)?;
        if minor != SUPPORTED_MINOR {
            // Flags and the EndpointSlice path adapt (built-in v1 slices from 1.21 on), but
            // only v1.20 is what the suites are run against.
            tracing::warn!(
                binary = %binaries.kube_apiserver.display(),
                minor,
                "the testbed is built for kube-apiserver v1.{SUPPORTED_MINOR}"
            );
        }
        let block = Arc::new(LoopbackBlock::reserve()?);
        let mut builder = tempfile::Builder::new();
        builder.prefix("meridian-testbed-");
        let dir = match std::env::var_os(TMPDIR_ENV).filter(|d| !d.is_empty()) {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(Error::io("creating the testbed directory"))?;

        let clusters = try_join_all(specs.iter().enumerate().map(|(index, spec)| {
            Cluster::start(
                spec.clone(),
                index,
                &binaries,
                minor,
                block.clone(),
                dir.path(),
            )
        }))
        .await?;
        tracing::info!(
            clusters = clusters.len(),
            block = %format!("127.{}.0.0/16", block.octet()),
            dir = %dir.path().display(),
            elapsed = ?started.elapsed(),
            "testbed ready"
        );
        Ok(Testbed {
            clusters,
            dir,
            block,
        })
    }

    /// The clusters, in spec order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Result<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::NotFound {
                kind: "cluster",
                name: name.to_string(),
            })
    }

    /// The testbed's directory (logs, kubeconfigs, etcd data); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The testbed's loopback block, `127.B.0.0/16`, as its second octet `B`.
    pub fn block_octet(&self) -> u8 {
        self.block.octet()
    }

    /// A fresh loopback address of this testbed, for a process the test runs itself.
    pub fn allocate_address(&self) -> Result<Ipv4Addr> {
        self.block.allocate()
    }
}

fn validate(specs: &[ClusterSpec]) -> Result<()> {
    if specs.is_empty() || specs.len() > MAX_CLUSTERS {
        return Err(Error::InvalidSpec(format!(
            "a testbed runs 1 to {MAX_CLUSTERS} clusters, not {}",
            specs.len()
        )));
    }
    let mut names = BTreeSet::new();
    for spec in specs {
        spec.validate()?;
        if !names.insert(spec.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "cluster name {} appears twice",
                spec.name
            )));
        }
    }
    Ok(())
}

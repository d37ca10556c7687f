//! Connecting to a cluster from kubeconfig flags, kubectl style.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// `--kubeconfig` / `--context` for the cluster a command talks to.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context); `mesh` commands take it
    /// once per cluster.
    #[arg(long = "context", global = true, action = clap::ArgAction::Append)]
    pub contexts: Vec<String>,
}

/// A loaded kubeconfig with the context chosen.
pub(crate) struct Target {
    /// The whole kubeconfig.
    pub kubeconfig: Kubeconfig,
    /// The context in use.
    pub context: String,
}

impl Target {
    /// Loads the kubeconfig named by the flags.
    pub(crate) fn load(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Self> {
        let kc = match kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?,
            None => Kubeconfig::read()
                .context("reading the default kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
        };
        let context = context
            .map(str::to_owned)
            .or_else(|| kc.current_context.clone())
            .ok_or_else(|| anyhow!("the kubeconfig has no current context; pass --context"))?;
        if !kc.contexts.iter().any(|c| c.name == context) {
            let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(anyhow!(
                "context {context:?} not found in the kubeconfig (have: {})",
                known.join(", ")
            ));
        }
        Ok(Self {
            kubeconfig: kc,
            context,
        })
    }

    /// A client for the chosen context.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        let options = KubeConfigOptions {
            context: Some(self.context.clone()),
            ..KubeConfigOptions::default()
        };
        let config = Config::from_custom_kubeconfig(self.kubeconfig.clone(), &options)
            .await
            .with_context(|| format!("loading context {:?}", self.context))?;
        Client::try_from(config).context("building a Kubernetes client")
    }

    /// The cluster entry (server, CA) of the chosen context.
    pub(crate) fn cluster(&self) -> anyhow::Result<(String, kube::config::Cluster)> {
        let ctx = self
            .kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == self.context)
            .and_then(|c| c.context.as_ref())
            .ok_or_else(|| anyhow!("context {:?} is empty", self.context))?;
        let named = self
            .kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .ok_or_else(|| {
                anyhow!(
                    "cluster {:?} of context {:?} not found",
                    ctx.cluster,
                    self.context
                )
            })?;
        let cluster = named
            .cluster
            .clone()
            .ok_or_else(|| anyhow!("cluster {:?} is empty", ctx.cluster))?;
        Ok((named.name.clone(), cluster))
    }
}

impl ClusterArgs {
    /// The one context of a single-cluster command, if given.
    pub(crate) fn context(&self) -> anyhow::Result<Option<&str>> {
        match self.contexts.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(anyhow!(
                "--context given {} times; only `mesh` commands take several",
                self.contexts.len()
            )),
        }
    }

    /// A client for the cluster named by the flags.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        Target::load(self.kubeconfig.as_deref(), self.context()?)?
            .client()
            .await
    }
}

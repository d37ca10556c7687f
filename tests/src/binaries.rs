//! Locating the Kubernetes binaries the testbed runs.
//!
//! Search order, the same as `tests/scripts/provision-k8s.sh`: `$KUBEBUILDER_ASSETS`
//! (controller-runtime's envtest convention), then `PATH`, then the provisioning cache
//! (`$MERIDIAN_K8S_CACHE`, default `~/.cache/meridian/k8s/v1.20.2`). A missing binary is a
//! loud error naming the script to run; the testbed never silently skips.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The Kubernetes version the provisioning script builds.
pub const KUBERNETES_VERSION: &str = "v1.20.2";

/// Environment variable naming the directory with the binaries (envtest convention).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// Environment variable overriding the provisioning cache directory.
pub const CACHE_ENV: &str = "MERIDIAN_K8S_CACHE";

const KUBE_APISERVER: &str = "kube-apiserver";
const ETCD: &str = "etcd";
const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Paths of the binaries one simulated cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-controller-manager`, if available (optional).
    pub kube_controller_manager: Option<PathBuf>,
}

impl Binaries {
    /// Finds the binaries, or fails with a message saying how to provision them.
    pub fn locate() -> Result<Self> {
        let cache = cache_dir();
        if let Some(dir) = env::var_os(ASSETS_ENV).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let require = |binary| {
                executable(&dir.join(binary)).ok_or_else(|| Error::AssetsIncomplete {
                    dir: dir.clone(),
                    binary,
                })
            };
            return Ok(Binaries {
                kube_apiserver: require(KUBE_APISERVER)?,
                etcd: require(ETCD)?,
                kube_controller_manager: executable(&dir.join(KUBE_CONTROLLER_MANAGER)),
            });
        }
        let find = |binary| search_path(binary).or_else(|| executable(&cache.join(binary)));
        let require = |binary| {
            find(binary).ok_or_else(|| Error::BinaryNotFound {
                binary,
                cache: cache.clone(),
            })
        };
        Ok(Binaries {
            kube_apiserver: require(KUBE_APISERVER)?,
            etcd: require(ETCD)?,
            kube_controller_manager: find(KUBE_CONTROLLER_MANAGER),
        })
    }
}

/// The provisioning cache: `$MERIDIAN_K8S_CACHE`, else `~/.cache/meridian/k8s/v1.20.2`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".cache/meridian/k8s").join(KUBERNETES_VERSION)
}

fn search_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).find_map(|dir| executable(&dir.join(binary)))
}

fn executable(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

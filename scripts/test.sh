#!/usr/bin/env bash
# The test command: installs prerequisites, then runs every test of the workspace against
# real processes (kube-apiserver + etcd per simulated cluster, the Meridian binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/prereqs.sh)"
export KUBEBUILDER_ASSETS
echo "[test] KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}" >&2
exec cargo test --workspace --locked "$@"

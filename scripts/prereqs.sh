#!/usr/bin/env bash
# Installs what Meridian's tests need on Debian (idempotent): Debian packages, then the
# Kubernetes v1.20.2 API server, controller manager and etcd for the hermetic testbed
# (built from Debian's sources once and cached; see tests/scripts/provision-k8s.sh).
# Prints `export KUBEBUILDER_ASSETS=...` on stdout for `eval "$(scripts/prereqs.sh)"`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[prereqs] %s\n' "$*" >&2; }

need=()
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v dig >/dev/null || need+=(dnsutils)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		sudo=sudo
	else
		sudo=
	fi
	log "installing Debian packages: ${need[*]}"
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

exec tests/scripts/provision-k8s.sh

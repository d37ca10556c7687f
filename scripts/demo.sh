#!/usr/bin/env bash
# The main job: the local multi-cluster failover demo. Builds Meridian's binaries, makes sure
# the testbed's Kubernetes binaries are there (scripts/prereqs.sh: Debian packages, and a
# kube-apiserver + etcd built once into ~/.cache/meridian), then runs
# `meridian-testbed demo`: three simulated clusters with Meridian's real controller, gateway
# and DNS in each, a steady request stream from east, and a live table while east goes
# 14 -> 10 -> 5 -> 0 healthy and heals. Ctrl-C stops everything cleanly.
# Arguments go to the demo: --quick, --step-seconds N, --rate N, --far-pods N.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked \
	-p meridian-testbed -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli
eval "$(scripts/prereqs.sh)"
export KUBEBUILDER_ASSETS
# The demo finds the Meridian binaries next to itself in the release directory.
exec "${CARGO_TARGET_DIR:-target}/release/meridian-testbed" demo "$@"

#!/usr/bin/env bash
# CI lint of the kind end-to-end (which itself needs Docker and cannot run in CI):
# `bash -n` and shellcheck on tests/kind/*.sh, then the kind configs parsed strictly
# (kind/apiVersion, names, region/zone labels as strings, non-overlapping subnets) by the
# Rust test `kind_configs_are_valid` — works offline with the repository's own toolchain,
# no PyYAML needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

command -v shellcheck >/dev/null || {
	echo "shellcheck is required (Debian: apt-get install shellcheck)" >&2
	exit 1
}
for script in tests/kind/*.sh; do
	bash -n "$script"
	shellcheck -x "$script"
done
echo "[kind-lint] scripts: bash -n and shellcheck clean" >&2

cargo test --quiet --locked -p meridian-testbed --test integration -- --exact manifests::kind::kind_configs_are_valid
echo "[kind-lint] kind-configs/*.yaml valid" >&2

#!/usr/bin/env bash
# The main job: the local multi-cluster demo. Until the testbed demo lands it prints the
# split for each seed scenario with the same engine the gateway runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p meridian-cli
for f in examples/scenarios/*.yaml; do
	printf '\n== %s\n' "$f"
	sed -n 's/^# \{0,1\}//p' "$f" | head -3
	target/release/meridianctl simulate -f "$f"
done

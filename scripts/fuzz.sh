#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets of fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to all of them. Starts from the seeds
# in fuzz/corpus/<target>/ (left untouched) plus what earlier runs found
# (fuzz/target/corpus/<target>/). A crash, panic, timeout or out-of-memory input is saved
# under fuzz/artifacts/<target>/; the script runs the other targets, then fails naming
# them. Reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target>
# <file>`, then keep it as a regression test in the owning crate (docs/testing.md#fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=(
	tunnel_connect # gateway: CONNECT :authority and meridian-service header, authorization
	policy         # controller and gateway: GlobalTrafficPolicy parsing, validation, routing
	dns_query      # DNS: wire bytes through request decoding, the authority, response encoding
	snapshot       # gateway and DNS: Snapshot decoding, catalog, routes, zones
	kubeconfig     # controller: registration kubeconfig acceptance (controller/src/members/kubeconfig.rs)
)
if (($# > 0)); then
	targets=("$@")
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module...); the
# stable compiler accepts them with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "[fuzz] installing cargo-fuzz" >&2
	cargo install cargo-fuzz --locked --version 0.13.2
fi

# Debug assertions and overflow checks on (cargo-fuzz's default). The sanitizer: see
# docs/testing.md#fuzzing. Built once for every target, then reused by each `run`.
flags=(--fuzz-dir fuzz)
start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "[fuzz] build: $((SECONDS - start)) s" >&2

failed=()
for target in "${targets[@]}"; do
	work=fuzz/target/corpus/$target
	mkdir -p "$work" "fuzz/artifacts/$target"
	echo "[fuzz] $target: ${seconds} s" >&2
	log=fuzz/target/$target.log
	# New inputs go to the first corpus directory only, so the seeds stay as committed.
	if cargo fuzz run "${flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
		-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		>"$log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
		echo "[fuzz] $target: ok, ${runs:-?} runs, ${rate:-?}/s, corpus $(find "$work" -type f | wc -l)" >&2
	else
		tail -n 60 "$log" >&2
		failed+=("$target")
	fi
done
if ((${#failed[@]} > 0)); then
	echo "[fuzz] FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
	exit 1
fi

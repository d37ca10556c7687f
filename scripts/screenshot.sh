#!/usr/bin/env bash
# Takes docs/failover-prometheus.png: Prometheus' graph of requests per second from east's
# gateway to each destination cluster while east fails over to west and heals (the
# testbed demo with --prometheus), rendered by headless Chromium (Debian `chromium`).
# Not run by CI (Chromium is large); run it by hand after changing the metrics:
#
#   scripts/screenshot.sh [--step-seconds N]    # default 10 s of steady traffic per step
#
# Debug builds (the demo's figures do not matter here, only the picture).
set -euo pipefail
cd "$(dirname "$0")/.."

step_seconds=10
if [[ ${1:-} == --step-seconds ]]; then
	step_seconds=${2:?--step-seconds needs a number}
fi
out=docs/failover-prometheus.png

log() { printf '[screenshot] %s\n' "$*" >&2; }

chromium=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $chromium ]]; then
	log "chromium not found (Debian: apt-get install --no-install-recommends chromium)"
	exit 1
fi
cargo build --locked \
	-p meridian-testbed -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli
eval "$(scripts/prereqs.sh)"
export KUBEBUILDER_ASSETS

work=$(mktemp -d)
demo_pid=
cleanup() {
	if [[ -n $demo_pid ]]; then
		kill -INT "$demo_pid" 2>/dev/null || true
		wait "$demo_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# The demo keeps everything up for 60 s after its last step: time for the shot.
"${CARGO_TARGET_DIR:-target}/debug/meridian-testbed" demo --prometheus \
	--step-seconds "$step_seconds" --hold-seconds 60 >"$work/demo.log" 2>&1 &
demo_pid=$!

wait_for() {
	local pattern=$1 seconds=$2
	for ((i = 0; i < seconds; i++)); do
		if grep -q "$pattern" "$work/demo.log"; then
			return 0
		fi
		if ! kill -0 "$demo_pid" 2>/dev/null; then
			log "the demo exited early:"
			cat "$work/demo.log" >&2
			exit 1
		fi
		sleep 1
	done
	log "timed out waiting for '$pattern':"
	cat "$work/demo.log" >&2
	exit 1
}

wait_for '^prometheus: http://' 300
prometheus=$(sed -n 's|^prometheus: \(http://[^/]*\)/.*|\1|p' "$work/demo.log" | head -1)
log "Prometheus at $prometheus; waiting for the failover to finish"
started=$SECONDS
wait_for '^holding for' 900
# The graph spans the demo's traffic, from Prometheus' start to now.
range=$((SECONDS - started + 5))

# Requests per second from east's gateway, per destination cluster, over the demo.
query='sum by (cluster) (rate(meridian_gateway_requests_total{source_cluster="east", service="user.demo.global"}[5s]))'
encoded=
for ((i = 0; i < ${#query}; i++)); do
	c=${query:i:1}
	case $c in
	[a-zA-Z0-9.~_-]) encoded+=$c ;;
	*) printf -v c '%%%02X' "'$c" && encoded+=$c ;;
	esac
done
url="$prometheus/graph?g0.expr=$encoded&g0.tab=0&g0.stacked=0&g0.show_exemplars=0&g0.range_input=${range}s"
log "shooting $url"
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
	--window-size=1400,900 --virtual-time-budget=15000 \
	--screenshot="$work/shot.png" "$url" >"$work/chromium.log" 2>&1 || {
	cat "$work/chromium.log" >&2
	exit 1
}
mv "$work/shot.png" "$out"
log "wrote $out"

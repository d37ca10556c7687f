#!/usr/bin/env bash
# Soak: three simulated clusters with Meridian's real controller, gateway and DNS in each,
# steady HTTP and TCP traffic from east, and a random fault every few seconds (west's
# gateway or controller SIGKILLed, a west pod unready or replaced), for a bounded time.
# Prints requests sent and failed (with the reason and the fault in force), the longest
# recovery, and RSS and open FDs of east's controller, gateway and DNS server at start
# and end. Exits non-zero unless: no FD growth, RSS growth < 10%, no failed request
# outside a fault's window.
# Usage: scripts/soak.sh [--minutes N] [--fault-seconds N]   (default: 10 minutes, 5 s)
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
	case $arg in
	-h | --help)
		sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	esac
done

# Debug builds: the figures compare start and end of one run, and CI has them built.
cargo build --locked \
	-p meridian-testbed -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli
eval "$(scripts/prereqs.sh)"
export KUBEBUILDER_ASSETS
# meridian-testbed finds the Meridian binaries next to itself.
exec "${CARGO_TARGET_DIR:-target}/debug/meridian-testbed" soak "$@"

#!/usr/bin/env bash
# Data-plane benchmark: Meridian's gateway and DNS against HAProxy and NSD, in the same
# run on the same machine, printed as one table of req/s (qps), p99 and the ratio to the
# baseline each path is compared with. See docs/benchmarks.md.
#
#   scripts/bench.sh              # everything (about 2 min per round after the build)
#   BENCH_ROUNDS=3 scripts/bench.sh
#
# Environment: BENCH_DURATION (seconds per wrk/dnsperf run, default 10), BENCH_ROUNDS
# (default 1; the median of the rounds is printed, with the range), BENCH_CONNECTIONS
# (wrk -c, default 16), BENCH_CONTROL_PLANE=1 (also run the controller's catalog and
# control_plane benches, a release build of the controller; BENCH_CONTROL_PLANE_SIZES,
# default "1k 100k", may add 1M: 50 clusters x 2,000 services x 10 endpoints, several
# GiB of memory; and the testbed's end-to-end propagation bench, debug build, a few
# minutes), BENCH_PROFILE=DIR (perf record -g of the caller
# gateway under the local HTTP load and of meridian-dns under dnsperf, into DIR),
# BENCH_BEFORE=DIR (DIR holds meridian-gateway and meridian-dns release binaries of an
# earlier commit: they run beside the current ones, on other addresses, and get rows of
# their own, so an optimisation is measured before and after in the same run),
# BENCH_ONLY=dns (only the DNS rows: no gateway build, no nginx/HAProxy/wrk; BENCH_BEFORE
# then needs only meridian-dns).
#
# Besides req/s and p99 the table gives the CPU time the proxy (HAProxy, the gateways,
# NSD, meridian-dns) spent per request: on a shared machine the rates move with the
# load of others, the CPU cost per request much less.
#
# Installs wrk, haproxy, nginx, nsd and dnsperf from Debian if missing (their system
# services are stopped and disabled: the benchmark runs its own instances on loopback
# addresses 127.0.40.0/22 and 127.0.44.1). Timings are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
PROFILE=${BENCH_PROFILE:-}
case ${BENCH_ONLY:-} in
'') GATEWAY=1 ;;
dns) GATEWAY=0 ;;
*)
	echo "BENCH_ONLY must be empty or dns, not ${BENCH_ONLY}" >&2
	exit 2
	;;
esac
export CARGO_INCREMENTAL=0
# Line tables in the release build, for perf (BENCH_PROFILE); no effect on speed.
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}

log() { printf '[bench] %s\n' "$*" >&2; }

# --- prerequisites -----------------------------------------------------------------------
install_prereqs() {
	local need=() fresh=()
	((GATEWAY)) && ! command -v wrk >/dev/null && need+=(wrk)
	command -v dnsperf >/dev/null || need+=(dnsperf)
	# Daemons live in /usr/sbin, which a non-root PATH may lack.
	local pkg bin daemons=(nsd:nsd)
	((GATEWAY)) && daemons+=(haproxy:haproxy nginx:nginx)
	for pkg in "${daemons[@]}"; do
		bin=${pkg#*:}
		if ! command -v "$bin" >/dev/null && [[ ! -x /usr/sbin/$bin ]]; then
			need+=("${pkg%%:*}")
			fresh+=("$bin")
		fi
	done
	((${#need[@]})) || return 0
	local sudo=
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	log "installing Debian packages: ${need[*]}"
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
	# The packages start system instances on :80 and :53; nothing here uses them.
	local svc
	for svc in "${fresh[@]}"; do
		if [[ -d /run/systemd/system ]]; then
			$sudo systemctl disable --now "$svc.service" >&2 || true
		elif [[ -x /etc/init.d/$svc ]]; then
			$sudo "/etc/init.d/$svc" stop >&2 || true
		fi
	done
}
install_prereqs
PATH=$PATH:/usr/sbin

# --- build -------------------------------------------------------------------------------
# The bench binaries (release profile) start the release meridian-gateway / meridian-dns.
bench_exe() {
	cargo bench --no-run -p "$1" --bench "$2" 2>&1 |
		tee -a "$work/build.log" |
		sed -n "s|.*Executable benches/$2.rs (\(.*\))|\1|p" | tail -n 1
}

work=$(mktemp -d /tmp/meridian-bench.XXXXXX)
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

log "building (release; slow the first time), log: $work/build.log"
gateway_bench=
((GATEWAY)) && gateway_bench=$(bench_exe meridian-gateway dataplane)
dns_bench=$(bench_exe meridian-dns serve)
[[ (-x $gateway_bench || $GATEWAY == 0) && -x $dns_bench ]] || {
	tail -n 30 "$work/build.log" >&2
	exit 1
}

# Waits until $1 contains a line "ready" (the bench harnesses print it when set up).
wait_ready() {
	local file=$1 i
	for ((i = 0; i < 600; i++)); do
		grep -qx ready "$file" 2>/dev/null && return 0
		sleep 0.2
	done
	log "timed out waiting for $file"
	cat "$file" >&2
	exit 1
}

# --- workload and baselines --------------------------------------------------------------
LOCAL_POD=127.0.41.1:8080
REMOTE_POD=127.0.42.1:8080
HAPROXY_HTTP=127.0.43.1:8081
HAPROXY_TCP=127.0.43.1:8082

start_http_baselines() {
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx-body;
    proxy_temp_path $work/nginx-proxy;
    fastcgi_temp_path $work/nginx-fastcgi;
    uwsgi_temp_path $work/nginx-uwsgi;
    scgi_temp_path $work/nginx-scgi;
    server {
        listen $LOCAL_POD;
        listen $REMOTE_POD;
        location / { return 200 "ok\n"; }
    }
}
EOF
nginx -e "$work/nginx-error.log" -c "$work/nginx.conf" &
pids+=($!)

# HAProxy needs two file descriptors per proxied connection.
nofile=$(ulimit -n)
maxconn=$(((nofile - 100) / 2))
((maxconn > 4096)) && maxconn=4096
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn $maxconn
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_in
    mode http
    bind $HAPROXY_HTTP
    default_backend pod_http
backend pod_http
    mode http
    http-reuse always
    server pod $LOCAL_POD
frontend tcp_in
    mode tcp
    bind $HAPROXY_TCP
    default_backend pod_tcp
backend pod_tcp
    mode tcp
    server pod $LOCAL_POD
EOF
haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
pids+=($!)
}
((GATEWAY)) && start_http_baselines

# --- Meridian ----------------------------------------------------------------------------
# start_meridian TAG GATEWAY_IP: both harnesses, with whatever binaries target/release has.
start_meridian() {
	mkdir -p "$work/dns$1"
	if ((GATEWAY)); then
		MERIDIAN_BENCH_LOCAL=$LOCAL_POD MERIDIAN_BENCH_REMOTE=$REMOTE_POD MERIDIAN_BENCH_GATEWAY_IP=$2 \
			"$gateway_bench" >"$work/gateways$1.out" 2>"$work/gateways$1.log" &
		pids+=($!)
	fi
	MERIDIAN_BENCH_DIR=$work/dns$1 "$dns_bench" >"$work/dns$1.out" 2>"$work/dns$1.log" &
	pids+=($!)
	((GATEWAY)) && wait_ready "$work/gateways$1.out"
	wait_ready "$work/dns$1.out"
}
bins=(target/release/meridian-dns)
((GATEWAY)) && bins+=(target/release/meridian-gateway)
if [[ -n ${BENCH_BEFORE:-} ]]; then
	# The harnesses start target/release/<binary>: swap the earlier build in while they
	# start (new inodes, so running processes keep theirs), then put the current one back.
	mkdir -p "$work/current"
	cp "${bins[@]}" "$work/current/"
	for bin in "${bins[@]}"; do
		install -m 755 "$BENCH_BEFORE/${bin##*/}" "$bin"
	done
	start_meridian -before 127.0.40.4 || true
	for bin in "${bins[@]}"; do
		install -m 755 "$work/current/${bin##*/}" "$bin"
	done
fi
start_meridian "" 127.0.40.2
listener() { awk -v n="$1" '$1 == n { print $2 }' "$work/gateways$2.out"; }
dns_addr() { awk '$1 == "dns" { print $2 }' "$work/dns$1.out"; }

NSD_ADDR=127.0.44.1
NSD_PORT=5300
cat >"$work/nsd.conf" <<EOF
server:
    ip-address: $NSD_ADDR
    port: $NSD_PORT
    username: ""
    chroot: ""
    zonesdir: "$work/dns"
    pidfile: "$work/nsd.pid"
    database: ""
    zonelistfile: "$work/nsd-zone.list"
    xfrdfile: "$work/nsd-xfrd.state"
    xfrdir: "$work"
    verbosity: 0
    # Debian's default limits each source to 200 qps; dnsperf is one source.
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: global
    zonefile: global.zone
EOF
nsd -d -c "$work/nsd.conf" 2>"$work/nsd.log" &
nsd_pid=$!
pids+=("$nsd_pid")
for ((i = 0; i < 100; i++)); do
	dig +short +time=1 +tries=1 -p "$NSD_PORT" @"$NSD_ADDR" svc-0.bench.global A >/dev/null 2>&1 && break
	sleep 0.2
done

# The process listening on TCP address $1 (ip:port).
pid_of_port() {
	ss -Hltnp "( src = $1 )" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}
# CPU time (clock ticks, all threads) used so far by the processes $@.
cpu_ticks() {
	local pid total=0 t
	for pid in "$@"; do
		t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
		total=$((total + t))
	done
	echo "$total"
}
TICK=$(getconf CLK_TCK)

# --- measurements ------------------------------------------------------------------------
declare -A rate p99 cpu lost
# wrk on one address: "req/s p99_ms requests errors".
run_wrk() {
	wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://$1/" 2>&1 | awk '
		/Requests\/sec:/ { rps = $2 }
		/requests in/ { n = $1 }
		$1 == "99%" {
			v = $2
			if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
			else if (v ~ /ms$/) { sub(/ms$/, "", v) }
			else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
			p = v
		}
		/Non-2xx|Socket errors/ { err = err " " $0 }
		END { printf "%.0f %.3f %d%s\n", rps, p, n, err }'
}
# dnsperf: "qps lost average_latency_ms queries". Four clients (source ports), so that
# servers with one socket per core see them spread.
run_dnsperf() {
	dnsperf -s "${1%:*}" -p "${1##*:}" -d "$work/dns/queries.txt" -l "$DURATION" -c 4 -q 100 2>&1 | awk '
		/Queries completed:/ { n = $3 }
		/Queries lost:/ { lost = $3 }
		/Queries per second:/ { qps = $4 }
		/Average Latency/ { lat = $4 * 1000 }
		END { printf "%.0f %s %.3f %d\n", qps, lost, lat, n }'
}
record() { # name rate p99 cpu_us_per_request
	rate[$1]+="$2 "
	p99[$1]+="$3 "
	cpu[$1]+="$4 "
}
# Nothing counted (no process, or its CPU not seen): "—" rather than a misleading 0.
us_per() { awk -v t="$1" -v n="$2" -v hz="$TICK" 'BEGIN { if (t > 0 && n > 0) printf "%.1f", t * 1e6 / hz / n; else print "—" }'; }

# name|address|processes whose CPU counts (empty: none, the workload itself)
http_cases=()
((GATEWAY)) && {
haproxy_pid=$(pid_of_port "$HAPROXY_HTTP")
http_cases+=("direct to the pod|$LOCAL_POD|")
http_cases+=("HAProxy mode http, http-reuse always|$HAPROXY_HTTP|$haproxy_pid")
http_cases+=("HAProxy mode tcp|$HAPROXY_TCP|$haproxy_pid")
for tag in ${BENCH_BEFORE:+-before} ""; do
	label=${tag:+ (before)}
	east=$(pid_of_port "$(listener local-http "$tag")")
	addr=$(listener local-http "$tag")
	east=$(pid_of_port "$addr")
	ip=${addr%:*}
	# The remote gateway has the same listeners on the next address.
	west=$(pid_of_port "${ip%.*}.$((${ip##*.} + 1)):${addr##*:}")
	http_cases+=("Meridian gateway, HTTP port, local endpoint$label|$(listener local-http "$tag")|$east")
	http_cases+=("Meridian gateway, TCP port, local endpoint$label|$(listener local-tcp "$tag")|$east")
	http_cases+=("two gateways + mTLS tunnel, HTTP port$label|$(listener tunnel-http "$tag")|$east $west")
	http_cases+=("two gateways + mTLS tunnel, TCP port$label|$(listener tunnel-tcp "$tag")|$east $west")
done
}
# NSD answers in forked server processes: count the whole process tree.
nsd_pids=$(ps -eo pid=,ppid= | awk -v root="$nsd_pid" '
	{ parent[$1] = $2 }
	END { for (p in parent) { q = p; while ((q in parent) && q != root) q = parent[q]; if (q == root) printf "%s ", p } }')
dns_cases=("NSD|$NSD_ADDR:$NSD_PORT|$nsd_pids")
for tag in ${BENCH_BEFORE:+-before} ""; do
	addr=$(dns_addr "$tag")
	dns_cases+=("meridian-dns${tag:+ (before)}|$addr|$(pid_of_port "$addr")")
done

for ((round = 1; round <= ROUNDS; round++)); do
	for c in ${http_cases[@]+"${http_cases[@]}"}; do
		IFS='|' read -r name addr procs <<<"$c"
		read -ra procs <<<"$procs"
		if [[ -n $PROFILE && $name == "Meridian gateway, HTTP port, local endpoint"* ]]; then
			mkdir -p "$PROFILE"
			perf record -g -o "$PROFILE/gateway-http${name##*endpoint}.data" -p "${procs[0]}" \
				-- sleep "$DURATION" 2>/dev/null &
			perf_pid=$!
		fi
		before=$(cpu_ticks "${procs[@]}")
		read -r r p n err <<<"$(run_wrk "$addr")"
		used=$(($(cpu_ticks "${procs[@]}") - before))
		[[ -n ${perf_pid:-} ]] && wait "$perf_pid" && perf_pid=
		[[ -z $err ]] || log "$name: $err"
		c_us=$( ((${#procs[@]})) && us_per "$used" "$n" || echo —)
		log "round $round: $name: $r req/s, p99 $p ms, $c_us µs CPU/request"
		record "$name" "$r" "$p" "$c_us"
	done
	for c in "${dns_cases[@]}"; do
		IFS='|' read -r name addr procs <<<"$c"
		read -ra procs <<<"$procs"
		if [[ -n $PROFILE && $name == meridian-dns* ]]; then
			mkdir -p "$PROFILE"
			perf record -g -o "$PROFILE/dns${name#meridian-dns}.data" -p "${procs[0]}" \
				-- sleep "$DURATION" 2>/dev/null &
			perf_pid=$!
		fi
		before=$(cpu_ticks "${procs[@]}")
		read -r q l lat n <<<"$(run_dnsperf "$addr")"
		used=$(($(cpu_ticks "${procs[@]}") - before))
		[[ -n ${perf_pid:-} ]] && wait "$perf_pid" && perf_pid=
		c_us=$(us_per "$used" "$n")
		log "round $round: $name: $q qps, $l lost, average latency $lat ms, $c_us µs CPU/query"
		record "$name" "$q" "$lat" "$c_us"
		lost[$name]+="$l "
	done
done

# --- table -------------------------------------------------------------------------------
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (lo == hi) print lo; else print lo "–" hi }'; }
m() { median <<<"${rate[$1]}"; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN { printf "%.2f×", a / b }'; }
meets() { awk -v a="$(m "$1")" -v b="$(m "$2")" -v t="$3" 'BEGIN { print (a / b >= t) ? "met" : "NOT met" }'; }

row() { # name [baseline target]
	local name=$1 base=${2:-} target=${3:-} r=— v=
	[[ -n ${rate[$name]:-} ]] || return 0
	if [[ -n $base ]]; then
		r=$(ratio "$name" "$base")
		v="≥ ${target}× $base: $(meets "$name" "$base" "$target")"
	fi
	printf '| %s | %s | %s ms | %s | %s | %s |\n' "$name" "$(range <<<"${rate[$name]}")" \
		"$(range <<<"${p99[$name]}")" "$(range <<<"${cpu[$name]}")" "$r" "$v"
}

echo
echo "$(date -u '+%F %H:%M') UTC · $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo +dirty) · $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) · wrk -t1 -c$CONNECTIONS -d${DURATION}s, dnsperf -c 4 -q 100 -l $DURATION · $ROUNDS round(s): median ratio, ranges"
if ((GATEWAY)); then
	echo
	echo "| path | req/s | p99 | proxy CPU µs/req | ratio | target |"
	echo "|---|---|---|---|---|---|"
	H="HAProxy mode http, http-reuse always" T="HAProxy mode tcp"
	row "direct to the pod"
	row "$H"
	row "$T"
	for label in ${BENCH_BEFORE:+" (before)"} ""; do
		row "Meridian gateway, HTTP port, local endpoint$label" "$H" 1.0
		row "Meridian gateway, TCP port, local endpoint$label" "$T" 1.1
		row "two gateways + mTLS tunnel, HTTP port$label" "$H" 0.7
		row "two gateways + mTLS tunnel, TCP port$label" "$T" 0.7
	done
fi
echo
echo "| DNS (dnsperf: A, AAAA, SRV, NXDOMAIN) | qps | average latency | server CPU µs/query | lost | ratio | target |"
echo "|---|---|---|---|---|---|---|"
for name in NSD ${BENCH_BEFORE:+"meridian-dns (before)"} meridian-dns; do
	r=— v=
	if [[ $name != NSD ]]; then
		r=$(ratio "$name" NSD)
		v=$(awk -v a="$(m "$name")" -v b="$(m NSD)" -v l="$(range <<<"${lost[$name]}")" \
			'BEGIN { print (a / b >= 0.8 && l == "0") ? "met" : "NOT met" }')
		v="≥ 0.8× NSD, 0 lost: $v"
	fi
	printf '| %s | %s | %s ms | %s | %s | %s | %s |\n' "$name" "$(range <<<"${rate[$name]}")" \
		"$(range <<<"${p99[$name]}")" "$(range <<<"${cpu[$name]}")" "$(range <<<"${lost[$name]}")" "$r" "$v"
done

if [[ ${BENCH_CONTROL_PLANE:-} == 1 ]]; then
	echo
	echo "Control plane (cargo bench -p meridian-controller --bench catalog):"
	cargo bench -p meridian-controller --bench catalog 2>/dev/null | grep -E '^[a-z_/ 0-9]+$|time:' || true
	echo
	# Synthetic members, no API server: initial sync, RSS, per-change CPU and bytes per
	# subscriber, and today's full pass as the baseline (docs/benchmarks.md).
	read -r -a sizes <<<"${BENCH_CONTROL_PLANE_SIZES:-1k 100k}"
	cargo bench -p meridian-controller --bench control_plane -- "${sizes[@]}" 2>/dev/null || true
	echo
	# End to end on the testbed (debug build: a release build of the testbed and the four
	# binaries takes too long here): one endpoint flip in east → west's gateway.
	echo "End to end on the testbed (cargo test -p meridian-testbed --bench propagation, debug):"
	if cargo build -q -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli; then
		MERIDIAN_BIN_DIR=$PWD/target/debug cargo test -q -p meridian-testbed --bench propagation 2>/dev/null || true
	fi
fi

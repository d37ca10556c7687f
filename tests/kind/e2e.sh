#!/usr/bin/env bash
# Zone failover end to end on three kind clusters (east: sh/2000400001, west: sh/200002,
# far: bj/bj-1), with the real image, the real manifests and real pods.
#
#   tests/kind/e2e.sh            # needs docker, kind >= 0.20, kubectl, cargo; ~10 min
#   KEEP=1 tests/kind/e2e.sh     # leave the clusters running afterwards
#
# Steps: create the clusters from kind-configs/, build meridian:dev from the Dockerfile and
# load it, install manifests/ with a meridian-cluster ConfigMap per cluster, create the
# mesh CA once and load it into every cluster, register every member into every other
# (multi-primary) with `meridianctl cluster add`, point CoreDNS's `global` zone at
# meridian-dns, deploy the `user` echo service (14 pods per cluster, exported), then from a
# client pod in east: 10/14 east pods ready -> all answers from east; 5/14 -> about half
# from west; 0/14 -> all from west, none from far; healed -> all from east again.
#
# kind has no LoadBalancer, so each member is registered with its node address and the
# gateway Service's NodePort (--gateway-address), and with the control-plane container's
# address as API server (--server), both reachable from the other clusters' pods over the
# kind Docker network. It uses its own kubeconfig file; ~/.kube/config is not touched.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CLUSTERS=(east west far)
CALLER=east
IMAGE=meridian:dev
ECHO_IMAGE=${ECHO_IMAGE:-busybox:1.36}
REPLICAS=14
REQUESTS=${REQUESTS:-400}
KEEP=${KEEP:-0}
KIND_NETWORK=${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meridian-kind.XXXXXX")
export KUBECONFIG="$WORK/kubeconfig"
CREATED=()

log() { printf '\n[kind-e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
	printf '[kind-e2e] FAIL: %s\n' "$*" >&2
	exit 1
}
# k CLUSTER ARGS...: kubectl against one cluster.
k() {
	local cluster=$1
	shift
	kubectl --context "kind-$cluster" "$@"
}
# label CLUSTER KEY: a node label of the cluster, as written in its kind config.
label() {
	sed -n "s|^ *topology\.kubernetes\.io/$2: \"\(.*\)\"\$|\1|p" "kind-configs/$1.yaml"
}
# until_true SECONDS WHAT CMD...: retries CMD every 2 s until it succeeds.
until_true() {
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after ${deadline}s waiting for: $what"
		sleep 2
	done
}

diagnostics() {
	local c
	for c in "${CREATED[@]}"; do
		printf '\n===== %s =====\n' "$c" >&2
		k "$c" get pods -A -o wide >&2 || true
		k "$c" get memberclusters,globalservices -o wide >&2 || true
		k "$c" -n meridian-system get services,endpoints >&2 || true
		local d
		for d in meridian-controller meridian-gateway meridian-dns; do
			printf -- '--- %s/%s logs\n' "$c" "$d" >&2
			k "$c" -n meridian-system logs "deployment/$d" --tail=40 >&2 || true
		done
	done
}

cleanup() {
	local rc=$?
	trap - EXIT
	if ((rc != 0)); then
		diagnostics
	fi
	if [[ $KEEP == 1 ]]; then
		log "KEEP=1: clusters left running; export KUBECONFIG=$KUBECONFIG"
	else
		local c
		for c in "${CREATED[@]}"; do
			kind delete cluster --name "$c" --kubeconfig "$KUBECONFIG" >&2 || true
		done
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ -n ${MERIDIANCTL:-} ]] || command -v cargo >/dev/null || die "cargo is required (or set MERIDIANCTL)"

for tool in docker kind kubectl; do
	command -v "$tool" >/dev/null || die "$tool is required"
done

# --- clusters, image --------------------------------------------------------------------
for c in "${CLUSTERS[@]}"; do
	log "creating kind cluster $c ($(label "$c" region)/$(label "$c" zone))"
	CREATED+=("$c")
	kind create cluster --config "kind-configs/$c.yaml" --kubeconfig "$KUBECONFIG" --wait 180s
done

log "building $IMAGE"
DOCKER_BUILDKIT=1 docker build -t "$IMAGE" "$ROOT"
# meridianctl runs on this machine (MERIDIANCTL=path skips the build).
if [[ -z ${MERIDIANCTL:-} ]]; then
	cargo build --release --locked -p meridian-cli --bin meridianctl
	MERIDIANCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/meridianctl
fi
mctl() { "$MERIDIANCTL" --kubeconfig "$KUBECONFIG" "$@"; }
docker image inspect "$ECHO_IMAGE" >/dev/null 2>&1 || docker pull "$ECHO_IMAGE"
for c in "${CLUSTERS[@]}"; do
	kind load docker-image "$IMAGE" "$ECHO_IMAGE" --name "$c"
done

# --- install --------------------------------------------------------------------------
log "creating the mesh CA"
mctl ca init --out "$WORK/ca"
for c in "${CLUSTERS[@]}"; do
	log "installing Meridian into $c"
	k "$c" create namespace meridian-system --dry-run=client -o yaml | k "$c" apply -f -
	k "$c" -n meridian-system create configmap meridian-cluster --from-literal=name="$c" \
		--dry-run=client -o yaml | k "$c" apply -f -
	mctl --context "kind-$c" ca issue-intermediate --cluster "$c" --root-dir "$WORK/ca"
	k "$c" apply -k manifests
done
for c in "${CLUSTERS[@]}"; do
	for d in meridian-controller meridian-dns meridian-gateway; do
		k "$c" -n meridian-system rollout status "deployment/$d" --timeout=300s
	done
done

# --- registration (every member into every other) ---------------------------------------
declare -A NODE_IP GATEWAY_PORT
for c in "${CLUSTERS[@]}"; do
	NODE_IP[$c]=$(docker inspect -f "{{ (index .NetworkSettings.Networks \"$KIND_NETWORK\").IPAddress }}" "$c-control-plane")
	GATEWAY_PORT[$c]=$(k "$c" -n meridian-system get service meridian-gateway \
		-o jsonpath='{.spec.ports[?(@.name=="tunnel")].nodePort}')
	[[ -n ${NODE_IP[$c]} && -n ${GATEWAY_PORT[$c]} ]] || die "no node address or gateway NodePort for $c"
done
for host in "${CLUSTERS[@]}"; do
	for member in "${CLUSTERS[@]}"; do
		[[ $member != "$host" ]] || continue
		log "registering $member into $host"
		mctl --context "kind-$member" cluster add --name "$member" \
			--host-kubeconfig "$KUBECONFIG" --host-context "kind-$host" \
			--server "https://${NODE_IP[$member]}:6443" \
			--gateway-address "${NODE_IP[$member]}:${GATEWAY_PORT[$member]}"
	done
done
member_synced() {
	[[ $(k "$1" get membercluster "$2" -o jsonpath='{.status.phase}' 2>/dev/null) == Synced ]]
}
for host in "${CLUSTERS[@]}"; do
	for member in "${CLUSTERS[@]}"; do
		until_true 180 "MemberCluster $member Synced in $host" member_synced "$host" "$member"
	done
	mctl --context "kind-$host" cluster list
done

# --- CoreDNS: the global zone goes to meridian-dns ------------------------------------
for c in "${CLUSTERS[@]}"; do
	dns_ip=$(k "$c" -n meridian-system get service meridian-dns -o jsonpath='{.spec.clusterIP}')
	corefile=$(k "$c" -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
	if ! grep -q '^global:53' <<<"$corefile"; then
		log "CoreDNS in $c: global -> $dns_ip"
		stub=$(sed -e '/^#/d' -e "s/MERIDIAN_DNS_IP/$dns_ip/" manifests/dns/coredns-stub-domain.conf)
		k "$c" -n kube-system create configmap coredns \
			--from-literal=Corefile="$corefile"$'\n'"$stub" --dry-run=client -o yaml |
			k "$c" replace -f -
		k "$c" -n kube-system rollout restart deployment coredns
		k "$c" -n kube-system rollout status deployment coredns --timeout=120s
	fi
done

# --- the user service -----------------------------------------------------------------
user_manifest() {
	sed -e "s|__CLUSTER__|$1|g" -e "s|__REGION__|$(label "$1" region)|g" \
		-e "s|__ZONE__|$(label "$1" zone)|g" -e "s|__IMAGE__|$ECHO_IMAGE|g" \
		-e "s|__REPLICAS__|$REPLICAS|g" <<'EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
# Echo pods answering {"cluster","region","zone","pod"}; ready while /tmp/ready exists,
# so the test flips readiness with `kubectl exec`.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: user
  namespace: demo
spec:
  replicas: __REPLICAS__
  selector:
    matchLabels:
      app: user
  template:
    metadata:
      labels:
        app: user
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: echo
          image: __IMAGE__
          imagePullPolicy: IfNotPresent
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          command:
            - sh
            - -c
            - |
              mkdir -p /tmp/www
              printf '{"cluster":"%s","region":"%s","zone":"%s","pod":"%s"}\n' \
                __CLUSTER__ __REGION__ __ZONE__ "$POD_NAME" >/tmp/www/index.html
              touch /tmp/ready
              exec httpd -f -p 8080 -h /tmp/www
          ports:
            - name: http
              containerPort: 8080
          readinessProbe:
            exec:
              command: [test, -f, /tmp/ready]
            periodSeconds: 1
            failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: user
  namespace: demo
  labels:
    meridian.io/export: "true"
spec:
  selector:
    app: user
  ports:
    - name: http
      port: 80
      targetPort: http
EOF
}
for c in "${CLUSTERS[@]}"; do
	log "deploying user ($REPLICAS pods) in $c"
	user_manifest "$c" | k "$c" apply -f -
done
for c in "${CLUSTERS[@]}"; do
	k "$c" -n demo rollout status deployment/user --timeout=300s
done

log "starting the client pod in $CALLER"
k "$CALLER" -n demo run client --image="$ECHO_IMAGE" --image-pull-policy=IfNotPresent \
	--restart=Never --command -- sleep 86400
k "$CALLER" -n demo wait --for=condition=Ready pod/client --timeout=120s

# --- checks ---------------------------------------------------------------------------
# ready_in CLUSTER: ready endpoints of user.demo in CLUSTER, as the caller's controller sees.
ready_in() {
	k "$CALLER" get globalservice user.demo \
		-o jsonpath="{.status.clusters[?(@.cluster==\"$1\")].ready}" 2>/dev/null
}
all_exporting() {
	local c
	for c in "${CLUSTERS[@]}"; do
		[[ $(ready_in "$c") == "$REPLICAS" ]] || return 1
	done
}
until_true 180 "user.demo exported by every cluster, all ready" all_exporting
k "$CALLER" get globalservices -o wide

VIP=$(k "$CALLER" get globalservice user.demo -o jsonpath='{.status.vip}')
[[ -n $VIP ]] || die "user.demo has no VIP in $CALLER"
resolves_to_vip() {
	k "$CALLER" -n demo exec client -- nslookup user.demo.global 2>/dev/null | grep -q "$VIP"
}
until_true 120 "user.demo.global resolving to $VIP in $CALLER" resolves_to_vip
log "user.demo.global -> $VIP in $CALLER"

ready_is() { [[ $(ready_in "$CALLER") == "$1" ]]; }

# set_ready N: exactly N of the caller's user pods ready, then wait for the controller.
set_ready() {
	local n=$1 i=0 pod pods
	mapfile -t pods < <(k "$CALLER" -n demo get pods -l app=user \
		-o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
	((${#pods[@]} == REPLICAS)) || die "expected $REPLICAS user pods in $CALLER, found ${#pods[@]}"
	for pod in "${pods[@]}"; do
		if ((i < n)); then
			k "$CALLER" -n demo exec "$pod" -- touch /tmp/ready
		else
			k "$CALLER" -n demo exec "$pod" -- rm -f /tmp/ready
		fi
		i=$((i + 1))
	done
	until_true 120 "$n/$REPLICAS ready in $CALLER" ready_is "$n"
	# The status and the snapshot come from the same pass; give the gateways a moment.
	sleep 5
	mctl --context "kind-$CALLER" explain user.demo.global \
		--from "$(label "$CALLER" region)/$(label "$CALLER" zone)" || true
}

# send: REQUESTS requests from the client pod; sets EAST WEST FAR ERRORS.
send() {
	local out
	out=$(k "$CALLER" -n demo exec client -- sh -c "
		i=0
		while [ \$i -lt $REQUESTS ]; do
			wget -q -T 3 -O - http://user.demo.global/ || echo '{\"cluster\":\"error\"}'
			i=\$((i + 1))
		done")
	count() { grep -c "\"cluster\":\"$1\"" <<<"$out" || true; }
	EAST=$(count east)
	WEST=$(count west)
	FAR=$(count far)
	ERRORS=$(count error)
	printf '[kind-e2e] %s requests: east=%s west=%s far=%s errors=%s\n' \
		"$REQUESTS" "$EAST" "$WEST" "$FAR" "$ERRORS" >&2
}

expect() {
	local what=$1
	shift
	if ! "$@"; then
		die "$what (east=$EAST west=$WEST far=$FAR errors=$ERRORS of $REQUESTS)"
	fi
	log "ok: $what"
}
in_range() { (($1 >= $2 && $1 <= $3)); }
# Binomial tolerance for "about half": p=0.5, n=400 -> sd 10; accept +-6 sd.
half_lo=$((REQUESTS / 2 - 3 * REQUESTS / 20))
half_hi=$((REQUESTS / 2 + 3 * REQUESTS / 20))

log "step 1: 10/$REPLICAS ready in $CALLER -> all from $CALLER"
set_ready 10
send
expect "10/14: every answer from east" test "$EAST" -eq "$REQUESTS"

log "step 2: 5/$REPLICAS ready in $CALLER -> about half from west"
set_ready 5
send
expect "5/14: no errors" test "$ERRORS" -eq 0
expect "5/14: nothing from far" test "$FAR" -eq 0
expect "5/14: west share in [$half_lo, $half_hi]" in_range "$WEST" "$half_lo" "$half_hi"
expect "5/14: the rest from east" test $((EAST + WEST)) -eq "$REQUESTS"

log "step 3: 0/$REPLICAS ready in $CALLER -> all from west, none from far"
set_ready 0
send
expect "0/14: every answer from west" test "$WEST" -eq "$REQUESTS"

log "step 4: healed -> all from $CALLER again"
set_ready "$REPLICAS"
send
expect "14/14: every answer from east" test "$EAST" -eq "$REQUESTS"

log "PASS: zone failover on kind"

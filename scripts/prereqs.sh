#!/usr/bin/env bash
# Installs what Meridian's tests need on Debian (idempotent): Debian packages (kubectl,
# dig, shellcheck, iproute2, nftables, unbound, prometheus), then the
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
# Partition tests drop packets on a link with nftables (kernels without netem: docs/reliability.md).
command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || need+=(nftables)
# The e2e suite resolves .global through Unbound, as pods do through their cluster DNS.
# Tests run their own unprivileged instances (own config, loopback ports); the package's
# system service is not wanted (see below).
unbound_new=false
if ! command -v unbound >/dev/null && [[ ! -x /usr/sbin/unbound ]]; then
	need+=(unbound)
	unbound_new=true
fi
if ((${#need[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		sudo=sudo
	else
		sudo=
	fi
	log "installing Debian packages: ${need[*]}"
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
	if $unbound_new; then
		# Installing the package starts (under systemd) a resolver on 127.0.0.1:53 and
		# enables it at boot. Nothing here uses it: stop and disable what was just
		# installed; an Unbound the machine already had is left alone.
		if [[ -d /run/systemd/system ]]; then
			log "disabling the unbound system service (the tests run their own instances)"
			$sudo systemctl disable --now unbound.service >&2 || true
		elif [[ -x /etc/init.d/unbound ]]; then
			$sudo /etc/init.d/unbound stop >&2 || true
		fi
	fi
fi

# The dashboard's queries are tested against a real Prometheus scraping the testbed. Tests
# run their own instances (own config, 127.0.0.1); the package's system service is not
# wanted, nor its recommends (node-exporter and its service).
if ! command -v prometheus >/dev/null; then
	if [[ $(id -u) -ne 0 ]]; then
		sudo=sudo
	else
		sudo=
	fi
	log "installing Debian package: prometheus"
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
	if [[ -d /run/systemd/system ]]; then
		log "disabling the prometheus system service (the tests run their own instances)"
		$sudo systemctl disable --now prometheus.service >&2 || true
	elif [[ -x /etc/init.d/prometheus ]]; then
		$sudo /etc/init.d/prometheus stop >&2 || true
	fi
fi

exec tests/scripts/provision-k8s.sh

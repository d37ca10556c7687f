#!/usr/bin/env bash
# Provision the binaries the hermetic testbed runs: kube-apiserver, etcd and
# kube-controller-manager (Kubernetes v1.20.2).
#
# Lookup order (the same as the testbed library's):
#   1. $KUBEBUILDER_ASSETS (envtest convention)
#   2. PATH
#   3. the cache, $MERIDIAN_K8S_CACHE or ~/.cache/meridian/k8s/v1.20.2
#   4. otherwise build them from Debian bookworm's `kubernetes` source package
#      (Go 1.19 from Debian, GOPATH mode, vendored deps, offline) and copy
#      Debian's etcd into the cache.
#
# Idempotent: a complete cache is reused. Progress goes to stderr; stdout is a
# single line for `eval "$(tests/scripts/provision-k8s.sh)"`:
#   export KUBEBUILDER_ASSETS='<dir>'
# The directory is also written to <cache>/../assets-dir.
#
# Building needs root (apt-get) on Debian 12 (bookworm) and about 8 minutes on
# 2 cores. Elsewhere, download envtest binaries and set KUBEBUILDER_ASSETS.
set -euo pipefail

readonly K8S_VERSION=v1.20.2
readonly CACHE_DIR="${MERIDIAN_K8S_CACHE:-${HOME}/.cache/meridian/k8s/${K8S_VERSION}}"
readonly BUILD_DIR="${CACHE_DIR}.build"
# Required binaries; kube-controller-manager is optional at lookup time.
readonly REQUIRED=(kube-apiserver etcd)
readonly BUILT=(kube-apiserver kube-controller-manager)

log() { printf '[provision-k8s] %s\n' "$*" >&2; }
die() {
	printf '[provision-k8s] ERROR: %s\n' "$*" >&2
	exit 1
}

# has_all DIR: DIR holds every required binary, executable.
has_all() {
	local dir=$1 bin
	for bin in "${REQUIRED[@]}"; do
		[[ -x "${dir}/${bin}" ]] || return 1
	done
}

# done_with DIR: report DIR as the assets directory and exit.
done_with() {
	local dir
	dir=$(cd "$1" && pwd)
	mkdir -p "$(dirname "${CACHE_DIR}")"
	printf '%s\n' "${dir}" >"$(dirname "${CACHE_DIR}")/assets-dir"
	log "assets ready in ${dir}:"
	local bin
	for bin in kube-apiserver kube-controller-manager etcd; do
		if [[ -x "${dir}/${bin}" ]]; then
			log "  ${bin}: $("${dir}/${bin}" --version 2>&1 | head -n1)"
		fi
	done
	printf "export KUBEBUILDER_ASSETS='%s'\n" "${dir}"
	exit 0
}

find_existing() {
	if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
		if has_all "${KUBEBUILDER_ASSETS}"; then
			log "using \$KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
			done_with "${KUBEBUILDER_ASSETS}"
		fi
		die "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks one of: ${REQUIRED[*]}"
	fi

	local apiserver etcd
	apiserver=$(command -v kube-apiserver || true)
	etcd=$(command -v etcd || true)
	if [[ -n "${apiserver}" && -n "${etcd}" ]]; then
		if [[ "$(dirname "${apiserver}")" == "$(dirname "${etcd}")" ]]; then
			log "using binaries on PATH"
			done_with "$(dirname "${apiserver}")"
		fi
		# Scattered over PATH: gather them in the cache so one directory works.
		log "using binaries on PATH (linked into ${CACHE_DIR})"
		mkdir -p "${CACHE_DIR}"
		ln -sf "${apiserver}" "${CACHE_DIR}/kube-apiserver"
		ln -sf "${etcd}" "${CACHE_DIR}/etcd"
		local kcm
		kcm=$(command -v kube-controller-manager || true)
		[[ -n "${kcm}" ]] && ln -sf "${kcm}" "${CACHE_DIR}/kube-controller-manager"
		done_with "${CACHE_DIR}"
	fi

	if has_all "${CACHE_DIR}" && [[ -x "${CACHE_DIR}/kube-controller-manager" ]]; then
		log "using cache ${CACHE_DIR}"
		done_with "${CACHE_DIR}"
	fi
}

check_platform() {
	local id="" codename=""
	if [[ -r /etc/os-release ]]; then
		# shellcheck disable=SC1091
		id=$(. /etc/os-release && echo "${ID:-}")
		# shellcheck disable=SC1091
		codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	fi
	if [[ "${id}" != debian || "${codename}" != bookworm ]]; then
		die "kube-apiserver/etcd not found and this is not Debian 12 (bookworm), so they
cannot be built from Debian sources here. Install Kubernetes ${K8S_VERSION} test binaries
(e.g. \`setup-envtest use 1.20.2 -p path\` from controller-runtime) and set
KUBEBUILDER_ASSETS to the directory holding kube-apiserver and etcd."
	fi
	[[ $(id -u) -eq 0 ]] || die "building needs root for apt-get (or set KUBEBUILDER_ASSETS)"
	command -v apt-get >/dev/null || die "apt-get not found (or set KUBEBUILDER_ASSETS)"
}

install_packages() {
	local src=/etc/apt/sources.list.d/meridian-deb-src.sources
	if [[ ! -f "${src}" ]]; then
		log "adding deb-src entry ${src}"
		cat >"${src}" <<'EOF'
# Added by meridian tests/scripts/provision-k8s.sh to build kube-apiserver from source.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	fi
	log "apt-get update"
	apt-get update -qq >&2
	log "installing build dependencies and etcd-server"
	# Keep etcd-server's postinst from starting a system etcd daemon.
	local policy=/usr/sbin/policy-rc.d added_policy=0
	if [[ ! -e "${policy}" ]]; then
		printf '#!/bin/sh\nexit 101\n' >"${policy}"
		chmod 0755 "${policy}"
		added_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		ca-certificates dpkg-dev make rsync golang-go etcd-server \
		golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >&2
	if [[ ${added_policy} -eq 1 ]]; then
		rm -f "${policy}"
	fi
}

fetch_source() {
	mkdir -p "${BUILD_DIR}"
	local tree
	tree=$(find "${BUILD_DIR}" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
	if [[ -z "${tree}" ]]; then
		log "apt-get source kubernetes (into ${BUILD_DIR})"
		# As root, apt drops to the _apt user to download; let it write here.
		chmod 0777 "${BUILD_DIR}"
		(cd "${BUILD_DIR}" && apt-get source -qq kubernetes >&2)
		tree=$(find "${BUILD_DIR}" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
	fi
	[[ -n "${tree}" && -f "${tree}/Makefile" ]] || die "no kubernetes source tree in ${BUILD_DIR}"
	printf '%s\n' "${tree}"
}

# The vendored reflect2 1.0.1 / json-iterator 1.1.10 crash under Go >= 1.18
# (SIGSEGV in reflect.mapiterinit); Debian's 1.0.2 / 1.1.12 are the upstream fix.
replace_vendored() {
	local tree=$1 pkg
	for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
		local from=/usr/share/gocode/src/${pkg}
		[[ -d "${from}" ]] || die "missing ${from} (Debian -dev package not installed?)"
		log "replacing vendor/${pkg} with Debian's $(basename "${from}") sources"
		rm -rf "${tree:?}/vendor/${pkg}"
		mkdir -p "${tree}/vendor/${pkg}"
		# -L: Debian's gocode trees may contain symlinks into other packages.
		cp -rL "${from}/." "${tree}/vendor/${pkg}/"
		find "${tree}/vendor/${pkg}" -name '*_test.go' -delete
	done
}

build() {
	local tree=$1 what
	# GOPATH mode through the upstream Makefile: module mode cannot work offline.
	export GO111MODULE=off GOPROXY=off GOFLAGS='' CGO_ENABLED=0 GOTOOLCHAIN=local
	# No .git in a source package: give hack/lib/version.sh the version outright.
	export KUBE_GIT_VERSION=${K8S_VERSION} KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian-source
	export GOCACHE="${BUILD_DIR}/gocache"
	export PATH=/usr/lib/go/bin:${PATH}
	log "go: $(go version)"
	for what in "${BUILT[@]}"; do
		log "make WHAT=cmd/${what} (several minutes)"
		make -C "${tree}" WHAT="cmd/${what}" >&2
	done
}

install_cache() {
	local tree=$1 bin out
	mkdir -p "${CACHE_DIR}"
	for bin in "${BUILT[@]}"; do
		out=$(find "${tree}/_output" -type f -name "${bin}" -perm -u+x | head -n1)
		[[ -n "${out}" ]] || die "build produced no ${bin} under ${tree}/_output"
		install -m 0755 "${out}" "${CACHE_DIR}/${bin}.tmp"
		mv -f "${CACHE_DIR}/${bin}.tmp" "${CACHE_DIR}/${bin}"
	done
	local etcd=/usr/bin/etcd
	[[ -x "${etcd}" ]] || die "etcd-server did not install ${etcd}"
	install -m 0755 "${etcd}" "${CACHE_DIR}/etcd.tmp"
	mv -f "${CACHE_DIR}/etcd.tmp" "${CACHE_DIR}/etcd"
}

main() {
	find_existing
	log "kube-apiserver/etcd not found; building Kubernetes ${K8S_VERSION} from Debian sources"
	check_platform
	install_packages
	local tree
	tree=$(fetch_source)
	replace_vendored "${tree}"
	build "${tree}"
	install_cache "${tree}"
	has_all "${CACHE_DIR}" || die "cache ${CACHE_DIR} incomplete after build"
	if [[ "${MERIDIAN_K8S_KEEP_BUILD:-0}" != 1 ]]; then
		log "removing build tree ${BUILD_DIR}"
		rm -rf "${BUILD_DIR}"
	fi
	done_with "${CACHE_DIR}"
}

main "$@"

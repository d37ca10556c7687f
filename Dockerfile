# syntax=docker/dockerfile:1
# One image with every Meridian binary (meridian-controller, meridian-gateway, meridian-dns,
# meridianctl) under /usr/local/bin; the manifests pick one with `command:`.
#
#   docker build -t meridian:dev .
#
# Built by tests/kind/e2e.sh (not in CI: no Docker engine there). Needs BuildKit (the
# default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target dir between builds; binaries are copied
# out of the mounted target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p meridian-controller --bin meridian-controller \
        -p meridian-gateway --bin meridian-gateway \
        -p meridian-dns --bin meridian-dns \
        -p meridian-cli --bin meridianctl \
    && mkdir -p /out \
    && cp target/release/meridian-controller target/release/meridian-gateway \
        target/release/meridian-dns target/release/meridianctl /out/

# glibc + libgcc, no shell, no package manager; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="meridian" \
      org.opencontainers.image.description="Meridian multi-cluster failover: controller, gateway, DNS and meridianctl" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# Tunnel, admin (gateway); gRPC, metrics (controller); DNS, admin (meridian-dns).
EXPOSE 15008 15021 15010 15014 5353/udp 5353/tcp 15053
ENTRYPOINT ["/usr/local/bin/meridian-controller"]

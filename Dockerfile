# syntax=docker/dockerfile:1
#
# jimbus in a container: a Rust build stage, then a small non-root runtime image.
#
#   docker build -t jimbus .
#   docker run --rm -p 8080:8080 -p 50051:50051 -v jimbus-data:/var/lib/jimbus \
#     --ulimit memlock=-1 --security-opt seccomp=deploy/seccomp/io_uring.json jimbus
#
# glommio needs two things from the container runtime:
#   * io_uring. Docker's default seccomp profile (and containerd's, since 2023)
#     blocks io_uring_setup, io_uring_enter and io_uring_register, and jimbus
#     cannot start without them. Run with a seccomp profile that allows these
#     three syscalls (deploy/seccomp/io_uring.json: the default profile plus them), or, on a trusted host only,
#     `--security-opt seccomp=unconfined`. Kubernetes: a Localhost seccompProfile
#     with the same additions.
#   * locked memory. glommio registers its I/O buffers with the kernel, which
#     counts against RLIMIT_MEMLOCK; jimbus raises its soft limit to the hard one
#     at start, so give the container a large hard limit: `--ulimit memlock=-1`
#     (unlimited) or at least a few hundred MiB per shard.
# Shards are pinned to CPUs: with --cpus or a cpuset, set JIMBUS_SHARDS to the
# number of CPUs the container may use.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jimbus \
    && install -D -m 0755 target/release/jimbus /out/jimbus

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 jimbus \
    && useradd --system --uid 10001 --gid jimbus --home-dir /var/lib/jimbus \
        --no-create-home --shell /usr/sbin/nologin jimbus \
    && mkdir -p /var/lib/jimbus \
    && chown jimbus:jimbus /var/lib/jimbus
COPY --from=build /out/jimbus /usr/local/bin/jimbus

# Listen on every interface inside the container (the binary's defaults are
# loopback only); flags given to `serve` still win over these.
ENV JIMBUS_HTTP=0.0.0.0:8080 \
    JIMBUS_GRPC=0.0.0.0:50051 \
    JIMBUS_DATA_DIR=/var/lib/jimbus \
    JIMBUS_LOG_FORMAT=json

# The durable log: mount a named volume or a host directory here.
VOLUME ["/var/lib/jimbus"]
# 8080: the mod's HTTP API, /health, /ready, /metrics. 50051: gRPC.
EXPOSE 8080 50051

USER jimbus:jimbus
# `jimbus health` exits 0 when GET /health answers 200 (no curl in the image).
# If JIMBUS_HTTP moves the port, override the HEALTHCHECK to match.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["jimbus", "health", "--url", "http://127.0.0.1:8080/health"]
# SIGTERM drains in-flight requests, commits, fsyncs and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["jimbus"]
CMD ["serve"]

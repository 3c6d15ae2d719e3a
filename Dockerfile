# The challenge-event-handler image, for AccelByte Extend or any container
# platform. Build: docker build -t challenge-event-handler .
# (.dockerignore keeps target/ and the rest out of the build context.)
# protoc is vendored by the build (protoc-bin-vendored): no system protoc needed.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin challenge-event-handler

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app app \
 && mkdir -p /data && chown app /data
WORKDIR /app
COPY --from=build /src/target/release/challenge-event-handler /usr/local/bin/challenge-event-handler
COPY config ./config
# /data must be a persistent volume: the WAL (/data/wal) holds acknowledged
# updates that are not yet in the database, and the instance id. Without a
# database configured, the embedded store lives there too
# (/data/progress.sqlite3); production sets DATABASE_URL (or DB_HOST, …) and
# AB_NAMESPACE. The image runs as uid 10001: a bind-mounted host directory
# must be writable by it (chown 10001 <dir>), or the start stops with
# "cannot read or record the instance id in /data/wal: … Permission denied".
ENV CONFIG_PATH=/app/config/challenges.json \
    DATA_DIR=/data \
    GRPC_PORT=6565 \
    METRICS_PORT=8080 \
    LOG_FORMAT=json \
    LOG_LEVEL=info
VOLUME ["/data"]
EXPOSE 6565 8080
USER app
# 200 from /healthz only while serving (503 while starting, replaying the WAL
# or shutting down); the binary asks it itself, so the image needs no curl.
# `health` reads METRICS_PORT and BIND_ADDRESS as `serve` does, so changing
# them keeps the check pointed at the service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/challenge-event-handler", "health"]
ENTRYPOINT ["/usr/local/bin/challenge-event-handler"]
CMD ["serve"]

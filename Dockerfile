# Builds the challenge-event-handler image for AccelByte Extend.
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
 && mkdir -p /data/wal && chown -R app /data
WORKDIR /app
COPY --from=build /src/target/release/challenge-event-handler /usr/local/bin/challenge-event-handler
COPY config ./config
# Mount a persistent volume at /data: the WAL holds acknowledged updates that
# are not yet in PostgreSQL, and the instance id.
ENV CONFIG_PATH=/app/config/challenges.json \
    WAL_DIR=/data/wal \
    GRPC_PORT=6565 \
    METRICS_PORT=8080 \
    LOG_FORMAT=json \
    LOG_LEVEL=info
VOLUME ["/data"]
EXPOSE 6565 8080
USER app
ENTRYPOINT ["/usr/local/bin/challenge-event-handler"]

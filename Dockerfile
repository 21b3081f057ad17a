# The Sphere node image: one stripped binary (which also runs the built-in demo plugin) on Debian
# slim, as an unprivileged user, with CA certificates for https:// chain endpoints.
#
#   docker build -t sphere-node .     compiles here; dependencies are cached in their own layer
#                                     (cargo-chef), so a source change rebuilds only Sphere
#   scripts/test-compose              builds the same final stage from a binary built on the host,
#                                     where no registry serves the Rust image
ARG BASE=debian:bookworm-slim

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p sphere-node --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p sphere-node \
    && mkdir -p /out && strip -o /out/sphere target/release/sphere

# The final stage; scripts/test-compose reuses everything from here down. DO NOT rename.
FROM ${BASE} AS runtime
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update && apt-get install -y --no-install-recommends ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home sphere \
    && mkdir -p /data && chown sphere:sphere /data
COPY --from=build /out/sphere /usr/local/bin/sphere
USER sphere
# Listen on every interface inside the container; keep key and data on a volume.
ENV SPHERE_DATA_DIR=/data \
    SPHERE_HTTP__LISTEN=0.0.0.0:3000 \
    SPHERE_GRPC__LISTEN=0.0.0.0:8081
VOLUME /data
EXPOSE 3000 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sphere", "health"]
ENTRYPOINT ["sphere"]
CMD ["node"]

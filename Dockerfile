# The Sphere node image: one static-ish binary, which also runs the built-in demo plugin.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sphere-node

FROM debian:bookworm-slim
COPY --from=build /src/target/release/sphere /usr/local/bin/sphere
# Listen on every interface inside the container; keep data on a volume.
ENV SPHERE_DATA_DIR=/data \
    SPHERE_HTTP__LISTEN=0.0.0.0:3000 \
    SPHERE_GRPC__LISTEN=0.0.0.0:8081
VOLUME /data
EXPOSE 3000 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["sphere"]
CMD ["node"]

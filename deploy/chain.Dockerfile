# A development chain for the compose deployment: anvil (Foundry), from its npm package.
#   docker build -f deploy/chain.Dockerfile -t sphere-chain deploy
# scripts/test-compose builds the same final stage from the anvil binary in .tools.
ARG BASE=debian:bookworm-slim

FROM node:22-bookworm-slim AS fetch
RUN npm install --prefix /opt --no-audit --no-fund --ignore-scripts \
        @foundry-rs/anvil-linux-amd64@1.7.1 \
    && mkdir -p /out && cp /opt/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil /out/anvil

# The final stage; scripts/test-compose reuses everything from here down. DO NOT rename.
FROM ${BASE} AS runtime
COPY --from=fetch /out/anvil /usr/local/bin/anvil
# The chain's state, kept across restarts when a volume is mounted here: written every few seconds
# and when anvil stops, read when it starts.
RUN mkdir /state && chown nobody /state
USER nobody
EXPOSE 8545
# Healthy once the JSON-RPC port takes connections (bash's /dev/tcp: the image has no curl).
HEALTHCHECK --interval=2s --timeout=2s --retries=30 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8545"]
ENTRYPOINT ["anvil", "--host", "0.0.0.0", "--port", "8545", "--state", "/state", "--state-interval", "5"]

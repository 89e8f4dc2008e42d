# delegate's server image: `delegate serve` for compose.yml (the docker backend on a team box) and
# helm/delegate (the kubernetes backend).
#   scripts/server-image              (docker build -t delegate:VERSION .)
#   scripts/server-image --offline    the same runtime stage on the debootstrap base, with a binary
#                                     built on this machine: no registry (what the tests build)
# The sandboxes themselves use sandbox-image/, not this. The chart runs it as uid 10001 with a
# read-only root filesystem: it writes only under DELEGATE_DATA_DIR and /tmp.
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin delegate

FROM ${BASE}
# git: delegate diffs every run's work dir with its own git dir; ca-certificates: the model API.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/delegate /usr/local/bin/delegate
ENV DELEGATE_DATA_DIR=/var/lib/delegate \
    DELEGATE_LISTEN=0.0.0.0:8080 \
    DELEGATE_BACKEND=docker
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/delegate"]
CMD ["serve"]

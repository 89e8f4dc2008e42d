# delegate's server image: `delegate serve` for compose.yml (the docker backend on a team box).
#   docker build -t delegate .
# The sandboxes themselves use sandbox-image/, not this.
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

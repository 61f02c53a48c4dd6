# udo-stream container image (used by docker-compose.yml).
#   docker build -t udo-stream:local .

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# rdkafka-sys builds the bundled librdkafka with its own configure + make (no
# cmake); libz-sys links the system zlib, zstd-sys the system libzstd (the
# runtime image has libzstd1: dpkg needs it).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3 zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, against placeholder crate roots: this layer is rebuilt
# only when Cargo.toml or Cargo.lock change. (A target added to Cargo.toml
# with an explicit path, or a build.rs, must be copied here too.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin udo-stream \
 && rm -rf src

COPY src/ src/
COPY schemas/ schemas/
COPY topics/ topics/
# COPY keeps the files' own mtimes, which may be older than the placeholder
# build: touch the crate roots so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin udo-stream

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 udo \
 && useradd --system --uid 10001 --gid udo --no-create-home \
      --home-dir /opt/udo-stream --shell /usr/sbin/nologin udo

COPY --from=builder /build/target/release/udo-stream /usr/local/bin/udo-stream
# schemas/ and topics/ sit in the working directory, where `topics apply`
# and `schemas register` look for them.
COPY schemas/ /opt/udo-stream/schemas/
COPY topics/ /opt/udo-stream/topics/

WORKDIR /opt/udo-stream
# udo, by number so that runtimes can check it is not root.
USER 10001:10001

# The Prometheus endpoint must be reachable from outside the container.
ENV UDO_METRICS_ADDR=0.0.0.0:9464
EXPOSE 9464

ENTRYPOINT ["udo-stream"]
CMD ["--help"]

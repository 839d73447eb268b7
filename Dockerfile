# mail2ticket in a container. docs/operations.md, "Run in Docker", says how to run it.
#
#   docker build -t mail2ticket .
#
# Both base images are pinned to exact version tags. A tag can still be moved
# by its publisher; a digest cannot. To pin by digest too, look each image up
# on a machine that reaches the registry:
#
#   docker buildx imagetools inspect rust:1.95.0-slim-trixie
#
# and append the "Digest:" line to the tag, e.g.
#   FROM rust:1.95.0-slim-trixie@sha256:<64 hex digits> AS builder
# With both given, Docker pulls by the digest. Bump tag and digest together.
# The builder and the runtime must be the same Debian release (13, trixie):
# the binary links against that release's glibc.

# --- builder ---------------------------------------------------------------
FROM rust:1.95.0-slim-trixie AS builder
WORKDIR /build

# Dependencies first, in their own layer: a change under src/ then rebuilds
# only mail2ticket itself. Cargo reads Cargo.toml, which declares the bench
# benches/ingest.rs, so that file must exist even though it is not built,
# and the workspace member testkit/ (the tests' support), whose manifest it
# must read but whose code the image never builds: an empty lib stands in.
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
COPY testkit/Cargo.toml ./testkit/Cargo.toml
RUN mkdir src testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs testkit/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. COPY keeps the files' old modification times, so touch
# the crate roots: otherwise Cargo would take the placeholder build above as
# up to date. migrations/ is compiled into the binary.
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

# --- runtime ---------------------------------------------------------------
FROM debian:13.3-slim

# No packages are installed: TLS roots are compiled in (webpki-roots) and
# SQLite is linked statically. A private CA for a reader goes in its
# ca_file, mounted from the host.
RUN groupadd --system --gid 10001 mail2ticket \
    && useradd --system --no-log-init --uid 10001 --gid mail2ticket \
        --home-dir /var/lib/mail2ticket --no-create-home \
        --shell /usr/sbin/nologin mail2ticket \
    && install -d -o mail2ticket -g mail2ticket -m 0700 /var/lib/mail2ticket \
    && install -d -m 0755 /etc/mail2ticket

COPY --from=builder /build/target/release/mail2ticket /usr/local/bin/mail2ticket

# The configuration is mounted here (read-only is fine). It names the
# database in the volume: database = "sqlite:///var/lib/mail2ticket/mail2ticket.db"
# (a relative one would be relative to /etc/mail2ticket); the generated store
# key lands beside it.
ENV MAIL2TICKET_CONFIG=/etc/mail2ticket/config.toml \
    RUST_LOG=info
WORKDIR /var/lib/mail2ticket
VOLUME /var/lib/mail2ticket

# Only used when [daemon] listen is set (e.g. "0.0.0.0:9187").
EXPOSE 9187

USER 10001:10001

# SIGTERM lets the daemon finish the transactions in flight. It needs up to
# [daemon] shutdown_timeout (30 s): run with `docker run --stop-timeout 40`,
# Docker's default of 10 s is too short.
STOPSIGNAL SIGTERM

# Healthy while the scheduler's heartbeat in the database is fresh.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/mail2ticket", "health"]

ENTRYPOINT ["/usr/local/bin/mail2ticket"]
CMD ["run"]

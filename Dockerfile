# syntax=docker/dockerfile:1
# The operator and gateway images, with the layout `make images` writes
# (scripts/images), built with Docker from the repository root; BIN names the
# image:
#
#   docker build --build-arg BIN=gateway -t ghcr.io/tenantgate/gateway:0.1.0 .
#   docker build --build-arg BIN=operator -t ghcr.io/tenantgate/operator:0.1.0 .
#
# One fully static binary (glibc, +crt-static) on an empty root filesystem:
# /etc/passwd and group (nonroot 65532), nsswitch.conf, the CA bundle, /tmp,
# the user's home. Docker does not expand build arguments in ENTRYPOINT and
# CMD, so what differs between the two images (entrypoint, cmd, port) stands in
# a stage of each, image-operator and image-gateway, and the last stage picks
# one by BIN. e2e/images/dockerfile-layout checks that the final stage of each
# matches the image `make images` builds (paths, owners, user, entrypoint).
ARG BIN

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN mkdir -p /dirs/tmp /dirs/home/nonroot && chmod 1777 /dirs/tmp
ARG BIN
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,target=/src/target \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile image --target x86_64-unknown-linux-gnu -p tenantgate-${BIN} --bin tenantgate-${BIN} \
    && mkdir -p /out && cp target/x86_64-unknown-linux-gnu/image/tenantgate-${BIN} /out/

FROM scratch AS runtime
ARG BIN
COPY images/base/ /
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /dirs/tmp /tmp
COPY --from=build --chown=65532:65532 /dirs/home/nonroot /home/nonroot
COPY --from=build /out/tenantgate-${BIN} /usr/local/bin/tenantgate-${BIN}
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532

FROM runtime AS image-operator
ENTRYPOINT ["/usr/local/bin/tenantgate-operator"]
CMD ["run"]

FROM runtime AS image-gateway
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/tenantgate-gateway"]

FROM image-${BIN}

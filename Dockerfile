# The iam-key-exporter image: the exporter, the C libraries it links (glibc, libgcc_s),
# the CA certificates its HTTPS client trusts, and the sample configuration. No shell,
# no package manager, nothing else: what is not there cannot be exploited or go stale.
#
#   podman build -t iam-key-exporter .        (or docker build)
#   podman run --rm -p 9887:9887 iam-key-exporter \
#       --config.file=/usr/share/iam-key-exporter/sample-report.toml
#
# Against AWS, give it credentials the SDK's default chain finds (IRSA, EKS Pod Identity,
# the ECS or EC2 metadata endpoints, AWS_* variables) and a configuration: a file mounted
# where --config.file points, IAM_KEY_EXPORTER_* variables, or flags. README.md,
# "Kubernetes", has the manifests.
#
# RUST_IMAGE is the build stage's base: the Rust toolchain pinned by Cargo.toml's
# rust-version on Debian 12, whose glibc the runtime stage copies. Any image with cargo,
# a C compiler and CA certificates on glibc will do (scripts/build-image.sh makes one
# from Debian packages where no container registry can be reached).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
# The caches keep the crates and the compiled dependencies between builds of the image;
# the binary leaves the cache in the same step, since a cache mount is not in the layer.
RUN --mount=type=cache,id=iam-key-exporter-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=iam-key-exporter-target,target=/src/target \
    cargo build --locked --profile image \
    && install -D -m 0755 target/image/iam-key-exporter /rootfs/usr/local/bin/iam-key-exporter
# The runtime root: the libraries the dynamic loader will ask for (ldd names them, the
# loader included), and Debian's CA bundle, where rustls-native-certs looks first.
RUN set -eu; \
    for lib in $(ldd /rootfs/usr/local/bin/iam-key-exporter | grep -o '/[^ ]*'); do \
        cp --parents --dereference "$lib" /rootfs; \
    done; \
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt
COPY config/sample-report.toml config/sample-credential-report.csv /rootfs/usr/share/iam-key-exporter/

FROM scratch
COPY --from=build /rootfs/ /
# A numeric user, so that runAsNonRoot can verify it without an /etc/passwd.
USER 65532:65532
EXPOSE 9887
ENTRYPOINT ["/usr/local/bin/iam-key-exporter"]
LABEL org.opencontainers.image.title="iam-key-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the hygiene of AWS IAM access keys" \
      org.opencontainers.image.licenses="Apache-2.0"

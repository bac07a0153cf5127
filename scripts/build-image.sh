#!/usr/bin/env bash
# Builds the container image with podman:
#
#   scripts/build-image.sh [--local-builder] [TAG]      (TAG: localhost/iam-key-exporter:dev)
#
# Where a container registry can be reached this is `podman build -t TAG .`, and the
# Dockerfile's build stage starts from the Rust image it names. --local-builder is for
# machines that reach no container registry, only package registries (this project's):
# it first makes a stand-in for that Rust image from Debian 12 packages (debootstrap: gcc,
# libc6-dev, ca-certificates) and this machine's Rust toolchain, which must be the version
# Cargo.toml's rust-version pins. The toolchain is mounted into the build, not copied into
# the stand-in. The image built is the same Dockerfile's either way.
#
# podman's default isolation runs RUN steps through the OCI runtime, which refuses to
# start on machines whose cgroups are in hybrid mode (this project's); set
# BUILDAH_ISOLATION=chroot there, as the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."

local_builder=no
if [ "${1:-}" = "--local-builder" ]; then
    local_builder=yes
    shift
fi
tag="${1:-localhost/iam-key-exporter:dev}"
build_args=()

if [ "$local_builder" = yes ]; then
    rust_version=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
    builder="localhost/iam-key-exporter-builder:$rust_version"
    sysroot=$(rustc --print sysroot)
    if ! rustc --version | grep -q "^rustc $rust_version\."; then
        echo "build-image: this machine's rustc is $(rustc --version), Cargo.toml pins $rust_version" >&2
        exit 1
    fi
    if ! podman image exists "$builder"; then
        # The Debian mirror this machine's apt uses, so that debootstrap reaches it too.
        mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
        if [ -z "$mirror" ]; then
            mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
        fi
        if [ -z "$mirror" ]; then
            echo "build-image: no Debian mirror found in this machine's apt sources" >&2
            exit 1
        fi
        work=target/image-builder
        rm -rf "$work"
        mkdir -p "$work"
        echo "build-image: making $builder (debootstrap of Debian 12, about a minute)"
        debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
            bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
            || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
        rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
        mkdir -p "$work/rootfs/usr/local/rustup/toolchains/$rust_version.0-x86_64-unknown-linux-gnu" \
            "$work/rootfs/usr/local/cargo"
        # cargo inside the build fetches crates through this machine's network, so it
        # trusts what this machine trusts. The image's own CA bundle stays Debian's: the
        # Dockerfile copies /etc/ssl/certs/ca-certificates.crt, not this file.
        cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/host-ca.crt"
        toolchain_bin="/usr/local/rustup/toolchains/$rust_version.0-x86_64-unknown-linux-gnu/bin"
        tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
        podman import \
            --change "ENV PATH=/usr/local/cargo/bin:$toolchain_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            --change "ENV RUSTUP_HOME=/usr/local/rustup" \
            --change "ENV CARGO_HOME=/usr/local/cargo" \
            --change "ENV CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt" \
            "$work/rootfs.tar" "$builder" > /dev/null
        rm -rf "$work"
    fi
    build_args+=(--build-arg "RUST_IMAGE=$builder"
        --volume "$sysroot:/usr/local/rustup/toolchains/$rust_version.0-x86_64-unknown-linux-gnu:ro")
fi

podman build "${build_args[@]}" --tag "$tag" .

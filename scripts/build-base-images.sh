#!/usr/bin/env bash
# Build Flotilla's base images from Debian's packages, with no registry: debootstrap a minimal
# Debian rootfs and `docker import` it. Three images come out:
#   flotilla/debian-python:bookworm  python3 + venv, the base of every service image
#   flotilla/redis:bookworm          Debian's redis-server, for compose and the system tests
#   flotilla/prometheus:bookworm     Debian's prometheus, for compose's monitoring profile
# With a registry, skip this script and use python:3.11-slim / redis:7 / prom/prometheus (README).
# Idempotent: an image that already exists is left alone (FORCE=1 rebuilds).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON_BASE=${PYTHON_BASE:-flotilla/debian-python:$SUITE}
REDIS_BASE=${REDIS_IMAGE:-flotilla/redis:$SUITE}
PROMETHEUS_BASE=${PROMETHEUS_IMAGE:-flotilla/prometheus:$SUITE}
WORK=${BASE_BUILD_DIR:-build/base}
CACHE=$(realpath -m "$WORK/debs")

need_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "build-base-images: debootstrap needs root (run with sudo)" >&2
        exit 1
    fi
}

image_exists() {
    [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$1" >/dev/null 2>&1
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
}

# rootfs NAME PACKAGES: a minbase rootfs with PACKAGES, trimmed of caches and docs.
make_rootfs() {
    local dir="$WORK/$1" packages="$2"
    rm -rf "$dir"
    mkdir -p "$dir" "$CACHE"
    debootstrap --variant=minbase --cache-dir="$CACHE" --include="$packages" \
        "$SUITE" "$dir" "$MIRROR" >"$WORK/$1.log" 2>&1 || {
        tail -20 "$WORK/$1.log" >&2
        exit 1
    }
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/log/*.log
}

# import DIR IMAGE CHANGES...: docker import the rootfs as IMAGE.
import_rootfs() {
    local dir="$1" image="$2"
    shift 2
    local changes=()
    for change in "$@"; do changes+=(--change "$change"); done
    tar --numeric-owner -C "$dir" -c . | docker import "${changes[@]}" - "$image" >/dev/null
    echo "build-base-images: $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

build_python_base() {
    image_exists "$PYTHON_BASE" && { echo "build-base-images: $PYTHON_BASE exists"; return; }
    make_rootfs python "python3,python3-venv,ca-certificates"
    import_rootfs "$WORK/python" "$PYTHON_BASE" \
        'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'CMD ["python3"]'
    rm -rf "$WORK/python"
}

build_redis() {
    image_exists "$REDIS_BASE" && { echo "build-base-images: $REDIS_BASE exists"; return; }
    make_rootfs redis "redis-server"
    mkdir -p "$WORK/redis/data"
    chown "$(chroot "$WORK/redis" id -u redis):$(chroot "$WORK/redis" id -g redis)" "$WORK/redis/data"
    import_rootfs "$WORK/redis" "$REDIS_BASE" \
        'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'USER redis' 'WORKDIR /data' 'EXPOSE 6379' \
        'CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]'
    rm -rf "$WORK/redis"
}

build_prometheus() {
    image_exists "$PROMETHEUS_BASE" && { echo "build-base-images: $PROMETHEUS_BASE exists"; return; }
    make_rootfs prometheus "prometheus"
    mkdir -p "$WORK/prometheus/prometheus"
    chown "$(chroot "$WORK/prometheus" id -u prometheus):$(chroot "$WORK/prometheus" id -g prometheus)" \
        "$WORK/prometheus/prometheus"
    import_rootfs "$WORK/prometheus" "$PROMETHEUS_BASE" \
        'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'USER prometheus' 'WORKDIR /prometheus' 'EXPOSE 9090' \
        'ENTRYPOINT ["/usr/bin/prometheus"]' \
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
    rm -rf "$WORK/prometheus"
}

main() {
    mkdir -p "$WORK"
    if image_exists "$PYTHON_BASE" && image_exists "$REDIS_BASE" && image_exists "$PROMETHEUS_BASE"; then
        echo "build-base-images: $PYTHON_BASE, $REDIS_BASE and $PROMETHEUS_BASE exist"
        return
    fi
    need_root
    ensure_debootstrap
    build_python_base
    build_redis
    build_prometheus
}

main "$@"

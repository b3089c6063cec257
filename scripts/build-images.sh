#!/usr/bin/env bash
# Build the five service images (and, offline, the base and Redis images) without a registry.
#   BASE_IMAGE=python:3.11-slim scripts/build-images.sh   # with a registry
#   scripts/build-images.sh                                # offline: Debian base via debootstrap
# Wheels are downloaded on the host into build/wheels, so `docker build` needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=(kill-switch execution risk signal market-data)
BASE_IMAGE=${BASE_IMAGE:-flotilla/debian-python:bookworm}
TAG=${FLOTILLA_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
PIP=${PIP:-python3 -m pip}
WHEELS=build/wheels

build_base_if_local() {
    if [[ "$BASE_IMAGE" == flotilla/* ]]; then
        PYTHON_BASE="$BASE_IMAGE" bash scripts/build-base-images.sh
    fi
}

download_wheels() {
    # Wheels for CPython 3.11 on this machine's architecture (the images' Python), whatever the
    # host's own Python is.
    local arch
    arch=$(uname -m)
    mkdir -p "$WHEELS"
    $PIP download --quiet --disable-pip-version-check --dest "$WHEELS" \
        --only-binary=:all: --implementation cp --python-version 3.11 \
        --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
        --platform "manylinux2014_$arch" --platform "manylinux_2_5_$arch" \
        -r deploy/docker/requirements.txt
}

# A fingerprint of everything that goes into the service images: an image whose label matches
# is current and is not rebuilt, so tests can call this script every time for free.
source_hash() {
    {
        echo "$BASE_IMAGE"
        find libs services flotilla config data deploy/docker .dockerignore -type f \
            -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

is_current() {
    local label
    label=$(docker image inspect -f '{{index .Config.Labels "io.flotilla.source-hash"}}' \
        "flotilla/$1:$TAG" 2>/dev/null) || return 1
    [[ "$label" == "$HASH" ]]
}

build_service() {
    local service=$1 log="build/images-$1.log"
    if is_current "$service"; then
        echo "build-images: flotilla/$service:$TAG is current ($HASH)"
        return
    fi
    # The classic builder: Debian's engine has no buildx, and it never pulls a base it has.
    if ! DOCKER_BUILDKIT=0 docker build --file deploy/docker/Dockerfile \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --target "$service" \
        --label "io.flotilla.source-hash=$HASH" \
        --tag "flotilla/$service:$TAG" --tag "flotilla/$service:latest" . >"$log" 2>&1; then
        tail -30 "$log" >&2
        echo "build-images: building flotilla/$service failed (whole log: $log)" >&2
        exit 1
    fi
    echo "build-images: flotilla/$service:$TAG ($(docker image inspect -f '{{.Size}}' "flotilla/$service:$TAG" | numfmt --to=iec))"
}

main() {
    build_base_if_local
    HASH=$(source_hash)
    mkdir -p build
    download_wheels
    for service in "${SERVICES[@]}"; do
        build_service "$service"
    done
}

main "$@"

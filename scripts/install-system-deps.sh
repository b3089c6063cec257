#!/usr/bin/env bash
# Install the system packages Flotilla's tests need: redis-server (integration tests), and
# docker-compose when neither Compose v2 nor v1 is present (system tests; the Docker engine
# itself must already run). Idempotent: does nothing when everything is already on PATH.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Root runs apt-get directly; anyone else needs sudo.
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo --preserve-env=DEBIAN_FRONTEND)
    else
        echo "install-system-deps: not root and sudo is missing; cannot install packages" >&2
        exit 1
    fi
fi

PACKAGES=()
command -v redis-server >/dev/null 2>&1 || PACKAGES+=(redis-server)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    PACKAGES+=(docker-compose)
fi
if ! command -v docker >/dev/null 2>&1; then
    echo "install-system-deps: warning: no docker CLI; the system tests need a Docker engine" >&2
fi
if [[ ${#PACKAGES[@]} -eq 0 ]]; then
    echo "install-system-deps: redis-server and compose already present"
    exit 0
fi

# Tests start their own redis-server on a random loopback port, so Debian's
# packaged service is never used. In containers without systemd, policy-rc.d
# keeps the postinst from trying (and failing) to start it; elsewhere we stop
# and disable it after install so it does not hold port 6379 for nothing.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    ADDED_POLICY=1
fi
cleanup() {
    if [[ "$ADDED_POLICY" -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"

if [[ " ${PACKAGES[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

echo "install-system-deps: installed ${PACKAGES[*]}"

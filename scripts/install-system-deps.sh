#!/usr/bin/env bash
# Install the system packages Flotilla's tests need: redis-server (integration tests), Debian's
# prometheus for promtool (alert-rule unit tests), Debian's chromium (the dashboard test loads the
# page headless), and docker-compose when neither Compose v2 nor v1 is present (system tests; the
# Docker engine itself must already run). Idempotent: does nothing when everything is already on
# PATH.
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
command -v promtool >/dev/null 2>&1 || PACKAGES+=(prometheus)
command -v chromium >/dev/null 2>&1 || PACKAGES+=(chromium)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    PACKAGES+=(docker-compose)
fi
if ! command -v docker >/dev/null 2>&1; then
    echo "install-system-deps: warning: no docker CLI; the system tests need a Docker engine" >&2
fi
if [[ ${#PACKAGES[@]} -eq 0 ]]; then
    echo "install-system-deps: redis-server, promtool, chromium and compose already present"
    exit 0
fi

# Tests start their own redis-server on a random loopback port and use only promtool from
# prometheus, so Debian's packaged services are never used. In containers without systemd,
# policy-rc.d keeps the postinsts from trying (and failing) to start them; elsewhere we stop
# and disable them after install so they do not hold ports 6379 and 9090 for nothing.
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

"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

if [[ " ${PACKAGES[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if [[ " ${PACKAGES[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

echo "install-system-deps: installed ${PACKAGES[*]}"

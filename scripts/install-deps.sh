#!/usr/bin/env bash
# Installs the system packages and the Python test peers the gateway needs.
# Idempotent; uses sudo when not root. Used by README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(libmodbus-dev libsqlite3-dev pkg-config libstdc++-12-dev mosquitto mosquitto-clients socat openssl python3-venv curl prometheus chromium chromium-driver strace util-linux dpkg-dev lintian binutils libmosquitto-dev mbpoll)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${FORCE_APT_UPDATE:-0}" = "1" ]; then
    echo "==> apt-get update"
    $SUDO apt-get update -q
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${PKGS[@]}"
fi

# Python peers for tests: pymodbus (independent Modbus device) and paho-mqtt (independent MQTT client).
VENV=.venv
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> python venv in $VENV"
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pymodbus, paho.mqtt, serial, selenium' 2>/dev/null; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi

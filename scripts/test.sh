#!/usr/bin/env bash
# README command 2: install what is missing, build, and run the whole test suite against real
# peers (private Mosquitto, `gateway simulate`, pymodbus, socat pty pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build --build-tests
swift test --skip-build "$@"

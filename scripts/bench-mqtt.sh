#!/usr/bin/env bash
# Starts a private Mosquitto on a free loopback port and runs, in the same sitting, our MQTT
# benchmark, the same job with libmosquitto (Benchmarks/mosquitto_bench.c, the C peer) and with
# paho-mqtt. Usage: scripts/bench-mqtt.sh [count] (GATEWAY_BENCH=path: another gateway-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product gateway-bench
BIN="${GATEWAY_BENCH:-$(swift build -c release --show-bin-path)/gateway-bench}"
DIR="$(mktemp -d)"; PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n%s\n' "$PORT" "$([ "$(id -u)" -eq 0 ] && echo 'user root')" > "$DIR/m.conf"
mosquitto -c "$DIR/m.conf" > "$DIR/m.log" 2>&1 & MPID=$!
trap 'kill $MPID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
cc -O2 -o "$DIR/mosquitto_bench" Benchmarks/mosquitto_bench.c -lmosquitto
# Ours three ways (gateway-bench mqtt --help, --mode): awaited from the pool, awaited on the
# client's loop, and with completion callbacks, the shape of the C peer's job.
for mode in pool loop callbacks; do "$BIN" mqtt --port "$PORT" --count "${1:-100000}" --mode "$mode"; done
"$DIR/mosquitto_bench" "$PORT" "${1:-100000}"
.venv/bin/python Benchmarks/paho_bench.py "$PORT" "${1:-100000}"

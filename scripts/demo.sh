#!/usr/bin/env bash
# README command 1: install what is missing, build, start a private Mosquitto broker and the
# built-in Modbus simulator with the demo devices of gateway.toml, then the gateway.
# Ctrl-C stops everything this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product gateway
BIN="$(swift build -c release --show-bin-path)/gateway"

STATE="$(mktemp -d -t gateway-demo-XXXXXX)"
PIDS=()
# Stop in reverse order (the gateway first, so that it can still publish "offline" to the
# broker, then the broker). The children run in sessions of their own (setsid), so Ctrl-C reaches
# only this script, which then ends them one by one.
cleanup() {
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; wait "${PIDS[i]}" 2>/dev/null || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# A private broker on 127.0.0.1:1883 (never the system service).
MQTT_PORT=1883
if (exec 3<>/dev/tcp/127.0.0.1/$MQTT_PORT) 2>/dev/null; then
    echo "a broker already listens on 127.0.0.1:$MQTT_PORT: using it"
else
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n%s' "$MQTT_PORT" \
        "$([ "$(id -u)" -eq 0 ] && echo 'user root')" > "$STATE/mosquitto.conf"
    setsid mosquitto -c "$STATE/mosquitto.conf" > "$STATE/mosquitto.log" 2>&1 &
    PIDS+=($!)
fi

# The demo devices: unit 1 (turnstile-1) and unit 3 (front-door), values that move by themselves.
setsid "$BIN" simulate --tcp 127.0.0.1:1502 --unit 1 --unit 3 \
    --set 1/holding:100=215 --counter 1/input:11@2000 --drift 1/holding:100:180:260:1@1000 \
    --counter 3/discrete:0@5000 > "$STATE/simulator.log" 2>&1 &
PIDS+=($!)

# The demo QR reader: a pty pair; the gateway opens /tmp/gateway-demo-qr, you play the reader on
# /tmp/gateway-demo-qr-device.
setsid socat pty,raw,echo=0,link=/tmp/gateway-demo-qr pty,raw,echo=0,link=/tmp/gateway-demo-qr-device \
    > "$STATE/socat.log" 2>&1 &
PIDS+=($!)

cat <<MSG

  Broker:     mqtt://127.0.0.1:$MQTT_PORT      Simulator: Modbus TCP 127.0.0.1:1502 (units 1 and 3)
  Watch:      mosquitto_sub -h 127.0.0.1 -t 'gateway/#' -v
  Unlock:     mosquitto_pub -h 127.0.0.1 -t gateway/lobby/front-door/unlock/set -m true
              (answer on .../unlock/set/result; the simulator's write log shows on, then off 3 s later)
  Scan:       printf 'QR:4711\\n' > /tmp/gateway-demo-qr-device      (publishes gateway/lobby/qr-reader/scan)
              cat /tmp/gateway-demo-qr-device    (shows what the reader is sent, e.g. after .../qr-reader/beep/set -m 2)
  By hand:    $BIN read --tcp 127.0.0.1:1502 --unit 1 --holding 100 --type int16 --scale 0.1
  Writes the simulator saw: $STATE/simulator.log
  Status page: http://127.0.0.1:9108/    Metrics: http://127.0.0.1:9108/metrics    Health: /healthz
  Home Assistant: point its MQTT integration at this broker and the devices appear by themselves
              (discovery under homeassistant/device/...; mosquitto_sub -t 'homeassistant/#' -v shows it)

MSG
if "$BIN" --help 2>/dev/null | grep -qE '^[[:space:]]+run([[:space:]]|$)'; then
    setsid "$BIN" run --config gateway.toml --state-dir "$STATE" &
    PIDS+=($!)
else
    echo "NOTE: this build has no 'gateway run' yet (the uplink is still being built);"
    echo "      the broker and the simulator run, and 'gateway read'/'gateway write' work against them."
fi
echo "Ctrl-C to stop."
wait

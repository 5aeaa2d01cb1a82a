#!/usr/bin/env bash
# The Debian package, tested on this machine (CI: a fresh Debian 12, as root): installs
# dist/gateway_*.deb with apt, then
#   - lintian: no errors and no warnings (none is left unexplained: there are none today);
#   - systemd-analyze verify on the installed unit;
#   - `gateway --version` and `gateway check --config /etc/gateway/gateway.toml`;
#   - the installed binary as the `gateway` user, against a private Mosquitto and `gateway
#     simulate`, with a copy of the installed config pointed at them: values flow and an unlock
#     is answered ok. systemd is not PID 1 here: starting the unit itself (StateDirectory=, the
#     sandboxing, Type=notify and the watchdog, the postinst's start) is not tested;
#   - purge: no file of the package, its state or its unit links is left.
# Every process it starts is ended by PID; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
DEB="$(ls dist/gateway_*.deb | head -1)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "test-package: FAILED: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # wait_for SECONDS FILE TEXT: reads the file as it is written until TEXT comes (bounded)
    local end=$((SECONDS + $1)) line found=1 tp
    exec 3< <(exec tail -n +1 -F "$2" 2>/dev/null)
    tp=$!
    while ((SECONDS < end)) && IFS= read -r -t $((end - SECONDS)) line <&3; do
        if [[ "$line" == *"$3"* ]]; then found=0; break; fi
    done
    exec 3<&-
    kill "$tp" 2>/dev/null || true
    [ "$found" -eq 0 ] || fail "no '$3' in $2 within $1 s: $(tail -5 "$2" 2>/dev/null)"
}

echo "==> lintian $DEB"
lintian --fail-on error,warning "$DEB" 2>&1 | grep -v "running with root privileges" || true
lintian --fail-on error,warning "$DEB" > /dev/null 2>&1 || fail "lintian reported errors or warnings"

echo "==> apt-get install ./$DEB"
$SUDO apt-get install -y -q "./$DEB" > "$WORK/apt.log" 2>&1 || fail "install: $(tail -5 "$WORK/apt.log")"
FILES="$(dpkg -L gateway)"
systemd-analyze verify /lib/systemd/system/gateway.service || fail "systemd-analyze verify"
gateway --version
gateway check --config /etc/gateway/gateway.toml > "$WORK/check.log" || fail "gateway check: $(tail -5 "$WORK/check.log")"
id gateway | grep -q dialout || fail "the gateway user is not in dialout"
# The shipped profiles are found beside the installed binary.
gateway profiles --config /etc/gateway/gateway.toml > "$WORK/profiles.log" 2>&1 || fail "gateway profiles: $(tail -5 "$WORK/profiles.log")"
grep -q "^eastron-sdm120 .*(/usr/share/gateway/profiles/eastron-sdm120.toml)" "$WORK/profiles.log" || fail "shipped profiles not found: $(cat "$WORK/profiles.log")"

echo "==> the installed gateway as the gateway user, against Mosquitto and the simulator"
MQTT_PORT="$(free_port)"; SIM_PORT="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n%s' "$MQTT_PORT" "$([ "$(id -u)" -eq 0 ] && echo 'user root')" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 & PIDS+=($!)
gateway simulate --tcp "127.0.0.1:$SIM_PORT" --unit 1 --unit 3 --set 1/holding:100=215 > "$WORK/sim.log" 2>&1 & PIDS+=($!)
wait_for 10 "$WORK/mosquitto.log" "running"
STATE="$WORK/state"; mkdir -p "$STATE"; chmod 0777 "$WORK"; chown gateway:gateway "$STATE"
sed -e "s|mqtt://127.0.0.1:1883|mqtt://127.0.0.1:$MQTT_PORT|" -e "s|^port = 1502 |port = $SIM_PORT |" \
    -e "s|^id = \"lobby\" |id = \"lobby\"\nstate_dir = \"$STATE\"\nrequire_synced_clock = false |" \
    /etc/gateway/gateway.toml > "$WORK/gateway.toml"
printf '\n[http]\nlisten = ""\n' >> "$WORK/gateway.toml"
chmod 0644 "$WORK/gateway.toml"
grep -q "port = $SIM_PORT" "$WORK/gateway.toml" || fail "the config copy was not pointed at the simulator"
mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t 'gateway/#' -v > "$WORK/sub.log" 2>&1 & PIDS+=($!)
# setpriv execs the gateway itself (its PID is the one we end), as the user with its groups.
setpriv --reuid=gateway --regid=gateway --init-groups gateway run --config "$WORK/gateway.toml" > "$WORK/gateway.log" 2>&1 & PIDS+=($!)
wait_for 20 "$WORK/sub.log" "gateway/lobby/turnstile-1/temperature 21.5"
mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t gateway/lobby/front-door/unlock/set -m true -q 1
wait_for 20 "$WORK/sub.log" 'gateway/lobby/front-door/unlock/set/result {"ok":true'
echo "values flow and the unlock was answered: $(grep -c . "$WORK/sub.log") messages"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

echo "==> apt-get purge gateway"
$SUDO apt-get purge -y -q gateway > "$WORK/purge.log" 2>&1 || fail "purge: $(tail -5 "$WORK/purge.log")"
left=""
while IFS= read -r f; do
    if { [ -L "$f" ] || [ -e "$f" ]; } && ! [ -d "$f" ]; then left="$left $f"; fi   # a file or a link (not a directory, which others share)
done <<< "$FILES"
for f in /etc/gateway /usr/share/doc/gateway /var/lib/gateway /etc/systemd/system/multi-user.target.wants/gateway.service; do
    if [ -e "$f" ] || [ -L "$f" ]; then left="$left $f"; fi
done
[ -z "$left" ] || fail "left after purge:$left"
echo "test-package: ok"

#!/usr/bin/env python3
"""Command benchmark (not a test). Starts a private Mosquitto, `gateway simulate --log-requests`
and `gateway run` (release build) on loopback, sends commands and measures:
command published -> the write arrives at the device (the simulator's CLOCK_MONOTONIC stamp of
the write request, same clock as Python's time.monotonic on Linux), and command published ->
answer received. Usage: command_bench.py GATEWAY_BIN [COMMANDS] [POLL_MS]
PULSE_MS=N in the environment makes the commanded coil a pulse point (every `true` is then
journalled before its write: the pulse journal's cost is in the figures). STEADY=1 sends the
first command once the gateway has logged its start-up give-back (`start-up heap given back`,
10 s after start; binaries before 2026-12-06: `start-up pages given back`, after 5 s).
DEVICE=pymodbus: the device is pymodbus (Tests/TestSupport/scripts/pymodbus_server.py) instead of
`gateway simulate`, as in the peers' harness; the write's stamp is pymodbus's, taken when its
asyncio server has decoded the request (Python: later after the wire than our simulator's)."""
import hashlib, hmac, json, os, random, subprocess, sys, threading, time
from benchlib import BIN, TMP, STARTED, start_broker, start_sim, start_pymodbus, Observer, RawPublisher, proc_cpu_rss, context_switches

N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
POLL_MS = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
PULSE_MS = int(os.environ.get("PULSE_MS", "0"))
# SIGNED=1: every command signed (a key file; since 2026-12-06 each id is flushed to
# state_dir/command-ids before the write: its cost is in the figures).
SIGNED = os.environ.get("SIGNED", "") == "1"
KEY = b"bench-key-0123456789abcdef"
def payload(topic, value, i):
    if not SIGNED: return value
    ts, cid = int(time.time() * 1000), f"c{i}-{random.getrandbits(32):08x}"
    sig = hmac.new(KEY, f"{topic}\n{value}\n{ts}\n{cid}".encode(), hashlib.sha256).hexdigest()
    return f'{{"value":{value},"ts":{ts},"id":"{cid}","sig":"{sig}"}}'

PYMODBUS = os.environ.get("DEVICE", "simulate") == "pymodbus"
writes, cond = [], threading.Condition()
def on_line(line):
    if line.startswith('{"write":'):
        w = json.loads(line)["write"]
        with cond: writes.append(w["mono_us"]); cond.notify_all()
    elif PYMODBUS and line.startswith('{"request":'):   # pymodbus logs every request: the coil's write is FC 5
        r = json.loads(line)["request"]
        if r["fc"] == 5:
            with cond: writes.append(r["mono_us"]); cond.notify_all()

broker, mport = start_broker()
sim, sport = start_pymodbus(on_line) if PYMODBUS else start_sim(["--unit", "1"], on_line)
cfg = os.path.join(TMP, "cmd.toml")
signing = ""
if SIGNED:
    keyfile = os.path.join(TMP, "command.key")
    with open(keyfile, "wb") as f: f.write(KEY + b"\n")
    os.chmod(keyfile, 0o600)
    # The clock of a build machine may not count as synchronised; binaries before 2026-12-06
    # do not know the key (GATEWAY_EXTRA can add it for the newer one).
    signing = f'command_key_file = "{keyfile}"\n'

points = "".join(f'  [[device.point]]\n  name = "r{i}"\n  register = "holding"\n  address = {i}\n' for i in range(10))
pulse = f'  pulse_ms = {PULSE_MS}\n' if PULSE_MS else ""
open(cfg, "w").write(f'[gateway]\nid = "bench"\nstate_dir = "{TMP}"\n{signing}{os.environ.get("GATEWAY_EXTRA", "")}[mqtt]\nurl = "mqtt://127.0.0.1:{mport}"\n'
                     f'[[bus]]\nname = "plc"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {sport}\n'
                     f'[[device]]\nname = "d0"\nbus = "plc"\nunit = 1\npoll_ms = {POLL_MS}\n'
                     f'  [[device.point]]\n  name = "light"\n  register = "coil"\n  address = 1\n  writable = true\n' + pulse + points)
log = open(os.path.join(TMP, "gateway.log"), "w")
gw = subprocess.Popen([BIN, "run", "--config", cfg], stderr=subprocess.PIPE, text=True)
print(f"gateway pid {gw.pid} broker port {mport} simulator port {sport}", flush=True)   # for command_trace.py and command_wire.py
subscribed, gave_back = threading.Event(), threading.Event()
def pump_log():   # keep the gateway's log, and notice when it has subscribed to commands
    for l in gw.stderr:
        log.write(l)
        if "subscribed to commands" in l: subscribed.set()
        if "start-up heap given back" in l or "start-up pages given back" in l: gave_back.set()
threading.Thread(target=pump_log, daemon=True).start()
STARTED.append(gw)
obs = Observer(mport)
# PUBLISHER=raw: the commands (and the floor's messages) go out on a second connection, written
# from this thread as the clock is read (the default, paho, hands each to its network thread
# first: about 0.3 ms on this machine before the command leaves, in every figure).
RAW = os.environ.get("PUBLISHER", "paho") == "raw"
raw = RawPublisher(mport) if RAW else None
def publish(topic, payload):
    if raw: raw.publish(topic, payload)
    else: obs.c.publish(topic, payload, qos=1)
obs.wait(lambda t, p: t == "gateway/bench/d0/status" and p == "online")
if not subscribed.wait(10): sys.exit("the gateway did not subscribe to commands within 10 s")
if os.environ.get("STEADY") and not gave_back.wait(20): sys.exit("the gateway did not log its start-up give-back within 20 s")

to_write, to_answer = [], []
stamps = []   # (published, written) of each command, on the monotonic clock: for command_wire.py
def faults(pid):   # minor and major page faults so far (/proc/PID/stat fields 10 and 12)
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[7]), int(f[9])
cpu0, _ = proc_cpu_rss(gw.pid); x0 = context_switches(gw.pid); f0 = faults(gw.pid)
RESULT = "gateway/bench/d0/light/set/result"
def answer_times(): return [t for t, topic, _ in obs.msgs if topic == RESULT]
def wait_answer(k, timeout=5):
    end = time.monotonic() + timeout
    with obs.cond:
        while True:
            ts = answer_times()
            if len(ts) > k: return ts[k]
            left = end - time.monotonic()
            if left <= 0: return None
            obs.cond.wait(left)
for i in range(N):
    before = len(answer_times())
    with cond: nw = len(writes)
    value = "true" if i % 2 == 0 else "false"
    t0 = time.monotonic()
    publish("gateway/bench/d0/light/set", payload("gateway/bench/d0/light/set", value, i))
    ta = wait_answer(before)
    with cond:
        cond.wait_for(lambda: len(writes) > nw, timeout=5)
        tw = writes[nw] / 1e6 if len(writes) > nw else None
    if ta and tw:
        to_write.append((tw - t0) * 1000); to_answer.append((ta - t0) * 1000)
        stamps.append((t0, tw))
    time.sleep(random.uniform(0.005, 0.03))   # random phase against the poll grid
cpu1, rss = proc_cpu_rss(gw.pid); x1 = context_switches(gw.pid); f1 = faults(gw.pid)
# The floor of the MQTT part: the same publisher publishes (QoS 1) to a topic no one but the
# observer takes, through the same broker; published -> received by the observer, which is Python
# (slower to receive than the gateway), so this floor is if anything too high.
floor = []
for i in range(N):
    t0 = time.monotonic()
    publish("gateway/bench/floor", str(i))
    ta = obs.wait(lambda t, p, i=i: t == "gateway/bench/floor" and p == str(i), timeout=5)
    if ta: floor.append((ta - t0) * 1000)
    time.sleep(random.uniform(0.005, 0.03))   # paced as the commands are (the receipt was awaited above)
gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10); obs.stop(); raw and raw.stop(); broker.terminate(); broker.wait(10)

if os.environ.get("STAMPS"):   # command_wire.py: each command's stamps, and the wall clock's offset
    with open(os.environ["STAMPS"], "w") as f:
        f.write(f"{time.time() - time.monotonic()}\n" + "".join(f"{a} {b}\n" for a, b in stamps))
def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * q))]
print(f"device: {'pymodbus (DEVICE=pymodbus)' if PYMODBUS else 'gateway simulate (DEVICE=pymodbus: pymodbus)'}")
print(f"publisher: {'raw (PUBLISHER=raw)' if RAW else 'paho (PUBLISHER=raw: a second connection written from the calling thread)'}")
for name, xs in (("command -> device write", to_write), ("command -> answer received", to_answer), ("floor: publish -> received by the observer", floor)):
    print(f"{name}: p50 {pct(xs, .5):.2f} ms, p95 {pct(xs, .95):.2f} ms, p99 {pct(xs, .99):.2f} ms, max {max(xs):.2f} ms ({len(xs)} of {N} commands, poll_ms {POLL_MS})")
print(f"gateway RSS after the run: {rss:.1f} MiB")
# Per command, with the polls (one a second) in the same span: thread wake-ups and CPU time.
print(f"gateway per command: {(x1 - x0) / N:.1f} context switches, {(cpu1 - cpu0) / N * 1000:.3f} ms CPU; "
      f"page faults in the run: {f1[0] - f0[0]} minor, {f1[1] - f0[1]} major")

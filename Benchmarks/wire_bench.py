#!/usr/bin/env python3
"""The wire's limit (benchmark, not a test). A socat pty pair stands in for an RS-485 line;
`gateway simulate --rtu ... --wire-timing` makes it take the wire's time at BAUD (11 bits per
character, 3.5 characters of silence between frames); DEVICES units each answer one read of
REGS holding registers per poll; `gateway run` polls them all as fast as it may (poll_ms 10), and
a paho client sends a command every COMMAND_EVERY_MS to one coil. Reports:
  - line utilisation: requests answered per second, against the wire's maximum for the same
    frames: 1 / ((request + answer characters) x character time + 2 x t3.5);
  - the poll period each device gets (from the simulator's request log);
  - command latency (published -> the device's answer to the write complete on the wire: the
    simulator stamps writes then), p50/p95, against the floor: the rest of the transaction in
    progress (on average half a poll, at worst a whole one) plus the command's own frames.
FLOOD=1: a [[modbus_server]] front too, and an outside client (pymodbus) reading one of the
devices through it as fast as it can for the whole run: the poll periods and the line's use
show what it takes from the polls.
Usage: wire_bench.py GATEWAY_BIN [BAUD] [DEVICES] [SECONDS]   (env REGS=10, COMMAND_EVERY_MS=250, FLOOD=1, LINE_SHARE=0.25)"""
import json, os, statistics, subprocess, sys, threading, time
from benchlib import BIN, TMP, SIM_BIN, STARTED, start_broker, Observer, free_port

BAUD = int(sys.argv[2]) if len(sys.argv) > 2 else 9600
DEVICES = int(sys.argv[3]) if len(sys.argv) > 3 else 30
SECONDS = float(sys.argv[4]) if len(sys.argv) > 4 else 20
REGS = int(os.environ.get("REGS", "10"))
COMMAND_EVERY = int(os.environ.get("COMMAND_EVERY_MS", "250")) / 1000
FLOOD = os.environ.get("FLOOD") == "1"

# The wire's arithmetic.
char_s = 11 / BAUD
t35 = 0.00175 if BAUD > 19200 else 3.5 * char_s
poll_req, poll_ans = 8, 5 + 2 * REGS           # FC 3: unit fc addr(2) count(2) crc(2); unit fc n data crc(2)
cmd_req, cmd_ans = 8, 8                        # FC 5 and its echo
poll_tx = (poll_req + poll_ans) * char_s + 2 * t35
cmd_tx = (cmd_req + cmd_ans) * char_s + 2 * t35
wire_max = 1 / poll_tx

pty_dir = TMP
socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={pty_dir}/a", f"pty,raw,echo=0,link={pty_dir}/b"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
STARTED.append(socat)
for _ in range(100):
    if os.path.exists(f"{pty_dir}/a") and os.path.exists(f"{pty_dir}/b"): break
    time.sleep(0.02)

requests, writes, lock = [], [], threading.Lock()
units = [str(u) for u in range(1, DEVICES + 1)]
sim = subprocess.Popen([SIM_BIN, "simulate", "--rtu", f"{pty_dir}/b", "--baud", str(BAUD), "--wire-timing", "--log-requests"]
                       + sum((["--unit", u] for u in units), []), stdout=subprocess.PIPE, text=True)
STARTED.append(sim)
assert "listening rtu" in sim.stdout.readline()
def pump():
    for l in sim.stdout:
        if l.startswith('{"request":'):
            r = json.loads(l)["request"]
            with lock: requests.append((r["unit"], r["fc"], r["mono_us"] / 1e6))
        elif l.startswith('{"write":'):
            with lock: writes.append(json.loads(l)["write"]["mono_us"] / 1e6)
threading.Thread(target=pump, daemon=True).start()

broker, mport = start_broker()
cfg = os.path.join(TMP, "wire.toml")
devs = "".join(
    f'[[device]]\nname = "d{u}"\nbus = "line"\nunit = {u}\npoll_ms = 10\n'
    f'  [[device.point]]\n  name = "regs"\n  register = "holding"\n  address = 0\n  type = "string"\n  length = {REGS}\n'
    + ('  [[device.point]]\n  name = "relay"\n  register = "coil"\n  address = 0\n  writable = true\n' if u == "1" else "")
    for u in units)
front_port = free_port()
front = (f'[[modbus_server]]\nlisten = "127.0.0.1:{front_port}"\nline_share = {os.environ.get("LINE_SHARE", "0.25")}\n') if FLOOD else ""
open(cfg, "w").write(f'[gateway]\nid = "wire"\nstate_dir = "{TMP}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{mport}"\n[http]\nlisten = ""\n'
                     f'[homeassistant]\nenabled = false\n' + front +
                     f'[[bus]]\nname = "line"\ntype = "rtu"\nport = "{pty_dir}/a"\nbaud = {BAUD}\ntimeout_ms = 500\n' + devs)
gw = subprocess.Popen([BIN, "run", "--config", cfg], stderr=subprocess.DEVNULL)
STARTED.append(gw)
obs = Observer(mport)
if obs.wait(lambda t, p: t == f"gateway/wire/d{DEVICES}/status" and p == "online", 30) is None:
    sys.exit("the last device did not come online within 30 s")
time.sleep(1)   # benchmark, not a test: let the schedule settle

flood = None
if FLOOD:
    here = os.path.dirname(os.path.abspath(__file__))
    flood = subprocess.Popen([sys.executable, os.path.join(here, "..", "Tests", "TestSupport", "scripts", "modbus_client.py"),
                              "--port", str(front_port), f"flood:{DEVICES}:hr:0:100000"], stdout=subprocess.PIPE, text=True)
    STARTED.append(flood)
    time.sleep(1)
with lock: requests.clear(); writes.clear()
t0 = time.monotonic()
sent = []
value = False
while time.monotonic() - t0 < SECONDS:
    value = not value
    sent.append(time.monotonic())
    obs.c.publish("gateway/wire/d1/relay/set", "true" if value else "false", qos=1)
    time.sleep(COMMAND_EVERY)
time.sleep(1)
t1 = time.monotonic()
with lock:
    reqs = [r for r in requests if t0 <= r[2] <= t0 + SECONDS]
    ws = list(writes)

# The outside client's reads are FC 3 of the last device too: its requests cannot be told from
# that device's polls in the log, so with FLOOD the last device is left out of the poll periods.
polls = [r for r in reqs if r[1] == 3]
achieved = len(reqs) / SECONDS
# Each command adds its own transaction: the wire's maximum for this mix.
mix_tx = (len(polls) * poll_tx + (len(reqs) - len(polls)) * cmd_tx) / max(1, len(reqs))
mix_max = 1 / mix_tx
periods = []
for u in range(1, DEVICES + (0 if FLOOD else 1)):
    ts = sorted(r[2] for r in polls if r[0] == u)
    periods += [b - a for a, b in zip(ts, ts[1:])]
lat = []
j = 0
for s in sent:
    while j < len(ws) and ws[j] < s: j += 1
    if j < len(ws): lat.append(ws[j] - s); j += 1
lat.sort()
def pct(xs, p): return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
cmd_frames = (cmd_req + cmd_ans) * char_s + t35   # request, silence, answer
floor_p50 = poll_tx / 2 + cmd_frames  # on average half a poll in progress
floor_max = poll_tx + cmd_frames      # a whole poll just started
print(f"wire: {BAUD} baud, {DEVICES} devices x {REGS} registers, {SECONDS:.0f} s; character {char_s*1e3:.3f} ms, t3.5 {t35*1e3:.2f} ms")
print(f"  poll transaction on the wire {poll_tx*1e3:.1f} ms -> at most {wire_max:.1f} polls/s; with the commands' frames {mix_max:.1f} requests/s")
if FLOOD:
    outside = len([r for r in polls if r[0] == DEVICES])
    print(f"  with an outside client reading device {DEVICES} through the front as fast as it can (line_share {os.environ.get('LINE_SHARE', '0.25')}): "
          f"{outside} of the {len(polls)} reads were on device {DEVICES} (its own polls and the outside client's)")
print(f"  achieved {achieved:.1f} requests/s = {100*achieved/mix_max:.1f} % of the wire's maximum ({len(polls)} polls, {len(reqs)-len(polls)} commands)")
if periods:
    periods.sort()
    print(f"  poll period per device: p50 {pct(periods,.5)*1e3:.0f} ms, p95 {pct(periods,.95)*1e3:.0f} ms (the wire allows {DEVICES*poll_tx*1e3:.0f} ms for {DEVICES} devices)")
print(f"  command -> write at the device: p50 {pct(lat,.5)*1e3:.1f} ms, p95 {pct(lat,.95)*1e3:.1f} ms over {len(lat)} commands;"
      f" floor: p50 {floor_p50*1e3:.1f} ms, worst {floor_max*1e3:.1f} ms (a poll in progress + the command's own frames)")
obs.stop()

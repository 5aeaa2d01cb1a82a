#!/usr/bin/env python3
"""Where a command's time goes, on the wire (not a test): runs `command_bench.py GATEWAY_BIN
COMMANDS` and, while it sends commands, captures the loopback traffic of its broker and
simulator ports with tcpdump (kernel timestamps: nothing is traced inside any process, so no
one's figures are slowed down). For each command it finds, in order:

  A  the benchmark's PUBLISH on .../light/set reaching the broker (and, from the benchmark's
     own stamps, its publish call before it)
  B  the broker's PUBLISH of it to the gateway
  C  the gateway's Modbus write request to the simulator (and the simulator's stamp after it)
  D  the simulator's answer
  E  the gateway's read-back request
  F  the gateway's PUBLISH on .../set/result
  G  the broker's PUBLISH of the answer to the benchmark

and prints p50/p95 of each step; the floor topic's PUBLISH in and out (the broker alone) too.
Needs tcpdump and the right to capture on `lo`. Usage: command_wire.py GATEWAY_BIN [COMMANDS]"""
import os, re, struct, subprocess, sys, tempfile

BIN = os.path.abspath(sys.argv[1])
N = sys.argv[2] if len(sys.argv) > 2 else "300"
here = os.path.dirname(os.path.abspath(__file__))
pcap = tempfile.mktemp(prefix="command-wire-", suffix=".pcap")
stampfile = tempfile.mktemp(prefix="command-stamps-")
bench = subprocess.Popen([sys.executable, os.path.join(here, "command_bench.py"), BIN, N], cwd=here,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, STAMPS=stampfile))
first, ports = "", None
for l in bench.stdout:   # reading waits for the line; it ends if the benchmark ends without it
    first += l
    m = re.match(r"gateway pid \d+ broker port (\d+) simulator port (\d+)", l)
    if m:
        ports = int(m[1]), int(m[2])
        break
if ports is None:
    bench.kill()
    sys.exit(f"the benchmark did not say its ports:\n{first.strip()}")
MPORT, SPORT = ports
dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "256", "-U", "-w", pcap,
                         f"tcp and (port {MPORT} or port {SPORT})"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
report = first + bench.communicate(timeout=600)[0]
dump.terminate()
dump.wait(10)
print(report.strip())

def segments(path):
    """(time s, src port, dst port, payload) of every TCP segment with data (Ethernet on `lo`)."""
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    scale = 1e-9 if magic == 0xa1b23c4d else 1e-6
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00": continue
        ihl = (pkt[14] & 15) * 4
        tcp = pkt[14 + ihl:]
        total = struct.unpack(">H", pkt[16:18])[0]
        sport, dport = struct.unpack(">HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        payload = pkt[14 + ihl + doff:14 + total]
        if payload: yield sec + frac * scale, sport, dport, payload

def mqtt_publishes(payload):
    """Topics of the PUBLISH packets in a segment (small packets: none spans two segments)."""
    i, out = 0, []
    while i < len(payload):
        kind = payload[i] >> 4
        n, mult, j = 0, 1, i + 1
        while j < len(payload):
            n += (payload[j] & 127) * mult
            mult *= 128
            j += 1
            if payload[j - 1] < 128: break
        if kind == 3 and j + 2 <= len(payload):
            tl = struct.unpack(">H", payload[j:j + 2])[0]
            out.append(payload[j + 2:j + 2 + tl].decode("utf-8", "replace"))
        i = j + n
    return out

SET, RESULT, FLOOR = "gateway/bench/d0/light/set", "gateway/bench/d0/light/set/result", "gateway/bench/floor"
events = []   # (time, step)
for t, sp, dp, pl in segments(pcap):
    if MPORT in (sp, dp):
        for topic in mqtt_publishes(pl):
            into = dp == MPORT
            step = {(SET, True): "A", (SET, False): "B", (RESULT, True): "F", (RESULT, False): "G",
                    (FLOOR, True): "floor in", (FLOOR, False): "floor out"}.get((topic, into))
            if step: events.append((t, step))
    elif len(pl) >= 8:
        fc = pl[7]
        if dp == SPORT and fc in (5, 15): events.append((t, "C"))
        elif sp == SPORT and fc in (5, 15): events.append((t, "D"))
        elif dp == SPORT and fc == 1: events.append((t, "E"))
os.unlink(pcap)

# One command: A, then the first B, C, D, E, F, G after it, in that order (polls read holding
# registers, FC 3, and are not counted; a read of coils, FC 1, is the read-back).
steps, commands, cur = "ABCDEFG", [], None
for t, step in events:
    if step == "A":
        cur = {"A": t}
    elif cur is not None and step in steps and step not in cur and steps.index(step) == len(cur):
        cur[step] = t
        if step == "G":
            commands.append(cur)
            cur = None
floor, fin = [], None
for t, step in events:
    if step == "floor in": fin = t
    elif step == "floor out" and fin is not None: floor.append(t - fin); fin = None

def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * q))]
def line(name, xs): print(f"  {name:<52} p50 {pct(xs, .5) * 1000:.3f} ms, p95 {pct(xs, .95) * 1000:.3f} ms")
if not commands: sys.exit("no whole command in the capture")
print(f"on the wire ({len(commands)} commands whole in the capture):")
names = {"AB": "A->B broker: command in -> out to the gateway", "BC": "B->C gateway: command -> Modbus write request",
         "CD": "C->D simulator: write request -> answer", "DE": "D->E gateway: write answer -> read-back request",
         "EF": "E->F gateway: read-back request -> result published", "FG": "F->G broker: result in -> out"}
for a, b in zip(steps, steps[1:]): line(names[a + b], [c[b] - c[a] for c in commands])
line("A->C command on the wire -> Modbus write request", [c["C"] - c["A"] for c in commands])
# The benchmark's own stamps (monotonic; the wall clock's offset read once): its publish call ->
# A, and C -> the simulator's stamp of the write (its thread reading the request).
if os.path.exists(stampfile):
    rows = open(stampfile).read().split("\n")
    os.unlink(stampfile)
    offset = float(rows[0])
    pairs = [tuple(float(x) + offset for x in r.split()) for r in rows[1:] if r]
    out, at = [], 0
    for c in commands:
        while at + 1 < len(pairs) and pairs[at + 1][0] <= c["A"]: at += 1
        if at < len(pairs) and 0 <= c["A"] - pairs[at][0] < 0.005: out.append((c["A"] - pairs[at][0], pairs[at][1] - c["C"]))
    if out:
        line("publish call -> A (the benchmark's publisher: PUBLISHER=paho or raw)", [a for a, _ in out])
        line("C -> write stamped (the simulator's thread)", [b for _, b in out])
if floor: line("floor: broker in -> out (the benchmark's own topic)", floor)

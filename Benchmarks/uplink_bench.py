#!/usr/bin/env python3
"""Uplink benchmark (not a test). Starts a private Mosquitto, `gateway simulate` and `gateway run`
(release build) on loopback and measures: the gateway's own memory (Private_Dirty), PSS and RSS,
its CPU, the actual poll period, change -> publish latency, start -> first value, and the memory
while a 64 MiB outbox backlog drains. Usage: uplink_bench.py GATEWAY_BIN
Environment: ONLY=load|latency|backlog|outage (one part; outage: 100 devices with the broker
away, what the outbox writes and syncs), SIZES=1,100,240 (device counts of the load
part), HTTP=on|off, DOOR=on, HA=off, SMAPS=prefix (keep /proc/PID/smaps of each load run)."""
import os, random, sqlite3, statistics, subprocess, threading, time, urllib.request
from benchlib import BIN, TMP, STARTED, free_port, start_broker, start_sim, Observer, proc_cpu_rss, proc_memory, context_switches, stripped_size

# HTTP=on: the operations listener on a free loopback port, /metrics and /api/status fetched
# every 5 s (a Prometheus scrape and a status page left open); HTTP=off: `listen = ""`; unset:
# no [http] table (binaries before the listener existed).
HTTP = os.environ.get("HTTP", "")
HTTP_PORT = free_port() if HTTP == "on" else None

def scraper(stop):
    n = 0
    while not stop.wait(5):
        for path in ("/metrics", "/api/status"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=5).read(); n += 1
            except Exception as e:
                print("scrape failed:", e)
    print(f"  ({n} HTTP fetches)")

# DOOR=on: signed commands (a key file), a fail-safe value and a counter on every device.
DOOR = os.environ.get("DOOR", "") == "on"

def door_settings():
    if not DOOR: return ""
    key = os.path.join(TMP, "command.key")
    with open(key, "w") as f: f.write("bench-key-0123456789abcdef\n")
    os.chmod(key, 0o600)
    return f'command_key_file = "{key}"\nfailsafe_after_s = 60\n'

# HA=off: `[homeassistant] enabled = false` (discovery is on by default).
HA_OFF = os.environ.get("HA", "") == "off"

# A simulator serves at most 247 units on its port: above UNITS_PER_SIM devices the load part
# starts several simulators, each behind a bus of its own (plc0, plc1, ...), as a site with
# several Modbus TCP gateways is wired.
UNITS_PER_SIM = 200

def config(mqtt_port, sim_ports, devices, points_per_device, poll_ms, state_dir=TMP):
    if isinstance(sim_ports, int): sim_ports = [sim_ports]
    out = [f'[gateway]\nid = "bench"\nstate_dir = "{state_dir}"\n{door_settings()}{os.environ.get("GATEWAY_EXTRA", "")}\n[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n',
           {"on": f'[http]\nlisten = "127.0.0.1:{HTTP_PORT}"\n', "off": '[http]\nlisten = ""\n'}.get(HTTP, ""),
           '[homeassistant]\nenabled = false\n' if HA_OFF else ""]
    for k, port in enumerate(sim_ports):
        out.append(f'[[bus]]\nname = "plc{k}"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {port}\n')
    for d in range(devices):
        out.append(f'[[device]]\nname = "d{d}"\nbus = "plc{d // UNITS_PER_SIM}"\nunit = {d % UNITS_PER_SIM + 1}\npoll_ms = {poll_ms}\n')
        for p in range(points_per_device):
            out.append(f'  [[device.point]]\n  name = "p{p}"\n  register = "holding"\n  address = {p}\n')
            # DOOR=on: point 0 a counter (events), point 1 writable with a fail-safe value.
            if DOOR and p == 0: out.append('  counter = true\n')
            if DOOR and p == 1: out.append('  writable = true\n  failsafe = 0\n')
    path = os.path.join(TMP, f"g{devices}x{points_per_device}.toml")
    open(path, "w").write("".join(out)); return path

def scenario(devices, points, poll_ms, seconds, counters):
    broker, mport = start_broker()
    sims = []
    for first in range(0, devices, UNITS_PER_SIM):
        n = min(UNITS_PER_SIM, devices - first)
        units = sum([["--unit", str(u + 1)] for u in range(n)], [])
        counter_args = sum([["--counter", f"{u + 1}/holding:0@10"] for u in range(n)], []) if counters else []
        sims.append(start_sim(units + counter_args + ["--size", "200"]))
    obs = Observer(mport)
    cfg = config(mport, [port for _, port in sims], devices, points, poll_ms)
    t0 = time.monotonic()
    # WRAP: a command line the gateway runs under (a heap profile: WRAP="valgrind --tool=massif
    # --massif-out-file=/tmp/massif.out"); the memory figures are then the wrapper's.
    gw = subprocess.Popen(os.environ.get("WRAP", "").split() + [BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    STARTED.append(gw)
    stop = threading.Event()
    if HTTP == "on": threading.Thread(target=scraper, args=(stop,), daemon=True).start()
    first = obs.wait(lambda t, p: t.startswith("gateway/bench/d0/p"))
    time.sleep(1)
    startup = proc_memory(gw.pid)
    # Steady state: 12 s after start (the start-up heap is given back 10 s after start; binaries
    # before 2026-12-06 gave their start-up pages back after 5 s).
    time.sleep(max(0.0, t0 + 12 - time.monotonic()))
    c0, _ = proc_cpu_rss(gw.pid); w0 = time.monotonic(); x0 = context_switches(gw.pid)
    samples = []
    for _ in range(seconds):
        time.sleep(1); samples.append(proc_memory(gw.pid))
    c1, _ = proc_cpu_rss(gw.pid); w1 = time.monotonic(); x1 = context_switches(gw.pid)
    periods = []
    if counters:
        seen = {}
        for t, topic, _ in obs.msgs:
            if t >= w0 and topic.endswith("/p0"): seen.setdefault(topic, []).append(t)
        for d in range(devices):
            ts = seen.get(f"gateway/bench/d{d}/p0", [])
            periods += [b - a for a, b in zip(ts, ts[1:])]
        periods.sort()
    stop.set()
    if os.environ.get("SMAPS"):  # where the resident set is, for comparing two builds
        with open(f"/proc/{gw.pid}/smaps") as src, open(f'{os.environ["SMAPS"]}-{devices}', "w") as dst: dst.write(src.read())
    gw.terminate(); gw.wait(10)
    for sim, _ in sims: sim.terminate(); sim.wait(10)
    obs.stop(); broker.terminate(); broker.wait(10)
    return {"first_ms": (first - t0) * 1000 if first else None, "cpu_pct": 100 * (c1 - c0) / (w1 - w0), "switches": (x1 - x0) / (w1 - w0),
            "own": max(m["own"] for m in samples), "pss": max(m["pss"] for m in samples), "rss": max(m["rss"] for m in samples),
            "startup_own": startup["own"], "period_ms": statistics.mean(periods) * 1000 if periods else None,
            "period_n": len(periods), "period_p95_ms": periods[int(len(periods) * 0.95)] * 1000 if periods else None,
            "period_max_ms": periods[-1] * 1000 if periods else None}

def latency(poll_ms=100, samples=100):
    broker, mport = start_broker()
    sim, sport = start_sim(["--unit", "1"])
    obs = Observer(mport)
    cfg = config(mport, sport, 1, 4, poll_ms)
    gw = subprocess.Popen([BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    STARTED.append(gw)
    obs.wait(lambda t, p: t == "gateway/bench/d0/p3")
    lat = []
    # The change lands at an evenly spread phase of the poll grid (a golden-ratio sequence of
    # offsets after the last publish, which follows a poll): the same uniform phase a random
    # sleep gives, without its sampling noise (a p50 over 500 random phases moves by +-2 ms).
    phase = random.random()
    for i in range(1, samples + 1):
        t0 = time.monotonic()
        sim.stdin.write(f"set holding:3={i}\n"); sim.stdin.flush()
        t1 = obs.wait(lambda t, p, i=i: t == "gateway/bench/d0/p3" and p == str(i))
        if t1: lat.append((t1 - t0) * 1000)
        phase = (phase + 0.6180339887498949) % 1.0
        time.sleep(phase * poll_ms / 1000)
    gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10); obs.stop(); broker.terminate(); broker.wait(10)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.95)], lat[-1], len(lat)

def backlog(target_mib=64, payload_bytes=1000):
    """A 64 MiB outbox backlog (written beforehand, as a long outage leaves it) drained at start:
    the gateway's memory sampled every 100 ms from start until the broker has the last row."""
    state = os.path.join(TMP, "backlog"); os.makedirs(state, exist_ok=True)
    db = sqlite3.connect(os.path.join(state, "outbox"))
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, "
               "retain INTEGER NOT NULL, compactable INTEGER NOT NULL, ts INTEGER NOT NULL)")
    now, rows = int(time.time() * 1000), 0
    # Events (not compactable, as scans and counter events are), spread over 100 devices' topics,
    # until the file is just under the default bound (outbox_max_mb = 64).
    while db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0] < (target_mib - 1) * 1048576:
        db.executemany("INSERT INTO outbox (topic, payload, retain, compactable, ts) VALUES (?, ?, 0, 0, ?)",
                       ((f"backlog/d{i % 100}/scan", os.urandom(payload_bytes // 2).hex().encode(), now - 10**6 + i) for i in range(rows, rows + 2000)))
        db.commit(); rows += 2000
    db.execute("INSERT INTO outbox (topic, payload, retain, compactable, ts) VALUES ('gateway/bench/backlog-end', X'31', 0, 0, ?)", (now,))
    db.commit(); db.execute("PRAGMA wal_checkpoint(TRUNCATE)"); db.close()
    size = os.path.getsize(os.path.join(state, "outbox")) / 1048576
    broker, mport = start_broker()
    sim, sport = start_sim(["--unit", "1"])
    obs = Observer(mport)
    cfg = config(mport, sport, 1, 26, 1000, state_dir=state)
    t0 = time.monotonic()
    gw = subprocess.Popen([BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    STARTED.append(gw)
    samples, done = [], None
    while time.monotonic() - t0 < 300:
        samples.append(proc_memory(gw.pid))
        done = obs.wait(lambda t, p: t == "gateway/bench/backlog-end", timeout=0.1)
        if done: break
    after = proc_memory(gw.pid)
    gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10); obs.stop(); broker.terminate(); broker.wait(10)
    return {"rows": rows + 1, "file_mib": size, "drain_s": (done - t0) if done else None,
            "own": max(m["own"] for m in samples), "pss": max(m["pss"] for m in samples), "rss": max(m["rss"] for m in samples), "own_after": after["own"]}

def report(n, points, r):
    print(f"{n} device{'s' if n > 1 else ''} x {points} registers @1s: own memory {r['own']:.1f} MiB (1 s after start {r['startup_own']:.1f}), "
          f"PSS {r['pss']:.1f} MiB, RSS {r['rss']:.1f} MiB, CPU {r['cpu_pct']:.2f} %, {r['switches']:.0f} context switches/s, "
          + (f"actual period {r['period_ms']:.1f} ms (p95 {r['period_p95_ms']:.1f}, max {r['period_max_ms']:.1f}) over {r['period_n']} intervals, " if r['period_ms'] else "")
          + f"start -> first value {r['first_ms']:.0f} ms")

def outage(devices=100, points=10, seconds=60):
    """The broker away (nothing listens on its port) while every device's counter changes each
    poll: the outbox's writes and syncs, measured by /proc/PID/io and `strace -c` over a window."""
    units = sum([["--unit", str(u + 1)] for u in range(devices)], [])
    counter_args = sum([["--counter", f"{u + 1}/holding:0@10"] for u in range(devices)], [])
    sim, sport = start_sim(units + counter_args + ["--size", "200"])
    state = os.path.join(TMP, "outage-state"); os.makedirs(state, exist_ok=True)
    cfg = config(free_port(), sport, devices, points, 1000, state_dir=state)
    gw = subprocess.Popen([BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    STARTED.append(gw)
    time.sleep(12)
    def io():
        return {k: int(v) for k, v in (l.split(": ") for l in open(f"/proc/{gw.pid}/io").read().splitlines())}
    trace = os.path.join(TMP, "outage-strace")
    st = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", trace, "-p", str(gw.pid)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    a = io(); t0 = time.monotonic()
    time.sleep(seconds)
    b = io(); t1 = time.monotonic()
    st.send_signal(2); st.wait(10)
    syncs = 0
    for line in open(trace):
        f = line.split()
        if f and f[-1] in ("fsync", "fdatasync"): syncs += int(f[3])
    size = sum(os.path.getsize(os.path.join(state, n)) for n in os.listdir(state) if n.startswith("outbox"))
    gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10)
    w = t1 - t0
    return {"syncs_s": syncs / w, "wchar_h": (b["wchar"] - a["wchar"]) / w * 3600, "disk_h": (b["write_bytes"] - a["write_bytes"]) / w * 3600,
            "files": size, "seconds": w}

ONLY = os.environ.get("ONLY", "")  # "latency", "load", "backlog" or "outage": one part only
print(f"stripped executable: {stripped_size(BIN):.1f} MiB; HTTP={HTTP or 'default'} DOOR={'on' if DOOR else 'off'} HA={'off' if HA_OFF else 'on'}")
if ONLY in ("", "load"):
  # One register of each device changes every poll (published), and the 40 s window takes in
  # an MQTT keepalive (30 s): the steady state runs every path it has.
  for n in (int(x) for x in os.environ.get("SIZES", "1,100").split(",")):
    points = 26 if n == 1 else 10
    report(n, points, scenario(n, points, 1000, 40, counters=True))
if ONLY in ("", "backlog"):
  r = backlog()
  print(f"outbox backlog of {r['rows']} messages ({r['file_mib']:.1f} MiB file) drained in {r['drain_s'] or float('nan'):.1f} s: own memory peak {r['own']:.1f} MiB "
        f"({r['own_after']:.1f} after), PSS {r['pss']:.1f} MiB, RSS {r['rss']:.1f} MiB")
if ONLY in ("", "outage"):
  r = outage()
  print(f"outage, 100 devices (100 values/s into the outbox): {r['syncs_s']:.2f} syncs/s, written {r['wchar_h'] / 2**20:.0f} MiB/hour "
        f"(write(2) bytes; {r['disk_h'] / 2**20:.0f} MiB/hour reached the block layer), outbox files {r['files'] / 2**20:.1f} MiB after {r['seconds'] + 12:.0f} s")
if ONLY in ("", "latency"):
  p50, p95, mx, n = latency(samples=int(os.environ.get("SAMPLES", "100")))
  print(f"change -> publish at poll_ms=100: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {mx:.1f} ms ({n} samples)")

#!/usr/bin/env python3
"""Uplink benchmark (not a test). Starts a private Mosquitto, `gateway simulate` and `gateway run`
(release build) on loopback and measures: RSS and CPU of the gateway, the actual poll period at
100 devices, change -> publish latency, start -> first value. Usage: uplink_bench.py GATEWAY_BIN"""
import os, random, socket, statistics, subprocess, sys, tempfile, threading, time
import paho.mqtt.client as mqtt

BIN = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="gw-bench-")
CLK = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start_broker():
    port = free_port()
    conf = os.path.join(TMP, f"m{port}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n" + ("user root\n" if os.getuid() == 0 else ""))
    p = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port), 0.1).close(); break
        except OSError: time.sleep(0.05)
    return p, port

def start_sim(args):
    p = subprocess.Popen([BIN, "simulate", "--tcp", "127.0.0.1:0"] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    port = int(line.split()[2].rsplit(":", 1)[1])
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, port

class Observer:
    def __init__(self, port):
        self.msgs = []; self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"obs-{port}-{time.time()}")
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port); self.c.subscribe("gateway/#", qos=0); self.c.loop_start()
        time.sleep(0.3)
    def on_message(self, c, u, m):
        with self.cond:
            self.msgs.append((time.monotonic(), m.topic, m.payload.decode())); self.cond.notify_all()
    def wait(self, pred, timeout=10):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, topic, payload in self.msgs:
                    if pred(topic, payload): return t
                left = end - time.monotonic()
                if left <= 0: return None
                self.cond.wait(left)
    def stop(self): self.c.loop_stop(); self.c.disconnect()

def config(mqtt_port, sim_port, devices, points_per_device, poll_ms):
    out = [f'[gateway]\nid = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n',
           f'[[bus]]\nname = "plc"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {sim_port}\n']
    for d in range(devices):
        out.append(f'[[device]]\nname = "d{d}"\nbus = "plc"\nunit = {d + 1}\npoll_ms = {poll_ms}\n')
        for p in range(points_per_device):
            out.append(f'  [[device.point]]\n  name = "p{p}"\n  register = "holding"\n  address = {p}\n')
    path = os.path.join(TMP, f"g{devices}x{points_per_device}.toml")
    open(path, "w").write("".join(out)); return path

def proc_cpu_rss(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(st[11]) + int(st[12])
    rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
    return ticks / CLK, int(rss) / 1024

def scenario(devices, points, poll_ms, seconds, counters):
    broker, mport = start_broker()
    units = sum([["--unit", str(u + 1)] for u in range(devices)], [])
    counter_args = sum([["--counter", f"{u + 1}/holding:0@10"] for u in range(devices)], []) if counters else []
    sim, sport = start_sim(units + counter_args + ["--size", "200"])
    obs = Observer(mport)
    cfg = config(mport, sport, devices, points, poll_ms)
    t0 = time.monotonic()
    gw = subprocess.Popen([BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    first = obs.wait(lambda t, p: t.startswith("gateway/bench/d0/p"))
    time.sleep(3)
    c0, _ = proc_cpu_rss(gw.pid); w0 = time.monotonic()
    rss_samples = []
    for _ in range(seconds):
        time.sleep(1); rss_samples.append(proc_cpu_rss(gw.pid)[1])
    c1, _ = proc_cpu_rss(gw.pid); w1 = time.monotonic()
    periods = []
    if counters:
        for d in range(devices):
            ts = [t for t, topic, _ in obs.msgs if topic == f"gateway/bench/d{d}/p0" and t >= w0]
            periods += [b - a for a, b in zip(ts, ts[1:])]
    gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10); obs.stop(); broker.terminate(); broker.wait(10)
    return {"first_ms": (first - t0) * 1000 if first else None, "cpu_pct": 100 * (c1 - c0) / (w1 - w0),
            "rss_mib": max(rss_samples), "period_ms": statistics.mean(periods) * 1000 if periods else None,
            "period_n": len(periods)}

def latency(poll_ms=100, samples=100):
    broker, mport = start_broker()
    sim, sport = start_sim(["--unit", "1"])
    obs = Observer(mport)
    cfg = config(mport, sport, 1, 4, poll_ms)
    gw = subprocess.Popen([BIN, "run", "--config", cfg, "--log-level", "warning"], stderr=subprocess.DEVNULL)
    obs.wait(lambda t, p: t == "gateway/bench/d0/p3")
    lat = []
    for i in range(1, samples + 1):
        t0 = time.monotonic()
        sim.stdin.write(f"set holding:3={i}\n"); sim.stdin.flush()
        t1 = obs.wait(lambda t, p, i=i: t == "gateway/bench/d0/p3" and p == str(i))
        if t1: lat.append((t1 - t0) * 1000)
        time.sleep(random.uniform(0, poll_ms / 1000))  # random phase against the poll grid
    gw.terminate(); gw.wait(10); sim.terminate(); sim.wait(10); obs.stop(); broker.terminate(); broker.wait(10)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.95)], lat[-1], len(lat)

a = scenario(1, 26, 1000, 20, counters=False)
print(f"1 device x 26 points @1s: RSS {a['rss_mib']:.1f} MiB, CPU {a['cpu_pct']:.2f} %, start -> first value {a['first_ms']:.0f} ms")
b = scenario(100, 10, 1000, 20, counters=True)
print(f"100 devices x 10 registers @1s: RSS {b['rss_mib']:.1f} MiB, CPU {b['cpu_pct']:.2f} %, actual period {b['period_ms']:.1f} ms "
      f"over {b['period_n']} intervals, start -> first value {b['first_ms']:.0f} ms")
p50, p95, mx, n = latency()
print(f"change -> publish at poll_ms=100: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {mx:.1f} ms ({n} samples)")

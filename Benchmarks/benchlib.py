"""Shared helpers of the benchmarks: a private Mosquitto, `gateway simulate`, a paho observer,
/proc sampling. Loopback only; every process started here is ended by the caller, by PID."""
import atexit, os, shutil, socket, subprocess, sys, tempfile, threading, time
import paho.mqtt.client as mqtt

BIN = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="gw-bench-")
atexit.register(shutil.rmtree, TMP, True)
# The simulator runs from a copy of the binary: on a site the gateway is the only process running
# its binary, so no other process shares its pages (PSS is then the gateway's alone).
SIM_BIN = os.path.join(TMP, "gateway-simulator")
shutil.copy2(BIN, SIM_BIN)
# Written back before anything runs: a page of a freshly copied executable is still dirty in
# the page cache, and smaps counts it as Private_Dirty of the process that maps it (a gateway
# copied just before measured 12 MiB of "own" memory at 1 device instead of 2).
os.sync()
CLK = os.sysconf("SC_CLK_TCK")

# Every process started here is ended at exit, by PID, even when a benchmark fails half-way.
STARTED = []
def _end_started():
    for p in STARTED:
        if p.poll() is None:
            p.terminate()
            try: p.wait(5)
            except subprocess.TimeoutExpired: p.kill()
atexit.register(_end_started)   # registered after the rmtree: runs before it

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start_broker():
    port = free_port()
    conf = os.path.join(TMP, f"m{port}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n" + ("user root\n" if os.getuid() == 0 else ""))
    p = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(p)
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port), 0.1).close(); break
        except OSError: time.sleep(0.05)
    return p, port

def _start_device(cmd, what, on_line):
    """Starts a Modbus device that prints "listening tcp HOST:PORT" first, then hands every later
    line of its output to `on_line` (from a thread of its own). Returns (process, port)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    STARTED.append(p)
    line = p.stdout.readline()   # "listening tcp HOST:PORT ...", or "" if it ended
    if not line.startswith("listening tcp "): sys.exit(f"{what} did not start: {line.strip()!r}")
    port = int(line.split()[2].rsplit(":", 1)[1])
    def pump():
        for l in p.stdout:
            if on_line: on_line(l)
    threading.Thread(target=pump, daemon=True).start()
    return p, port

def start_sim(args, on_line=None):
    return _start_device([SIM_BIN, "simulate", "--tcp", "127.0.0.1:0"] + args, "gateway simulate", on_line)

def start_pymodbus(on_line=None):
    """pymodbus (the tests' independent Modbus peer) serving unit 1 over TCP on a free port, every
    request it decodes logged with its CLOCK_MONOTONIC stamp: the device of the peers' harness."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "TestSupport", "scripts", "pymodbus_server.py")
    return _start_device([sys.executable, script, "--tcp", "127.0.0.1:0", "--log-requests", "--spec", '{"1": {}}'], "pymodbus", on_line)

class Observer:
    def __init__(self, port):
        self.msgs = []; self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"obs-{port}-{time.time()}")
        self.c.on_message = self.on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port); self.c.subscribe("gateway/#", qos=0); self.c.loop_start()
        if not subscribed.wait(10): raise RuntimeError("observer: no SUBACK within 10 s")
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

class RawPublisher:
    """A second MQTT 3.1.1 connection that publishes at QoS 1 from the calling thread: the
    PUBLISH is handed to the kernel in the call (paho hands it to its network thread, which
    costs about 0.3 ms here before the bytes leave). Acknowledgements are read and dropped by a
    thread of its own."""
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = f"raw-{port}-{time.time()}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid   # clean session, no keepalive
        self.s.sendall(bytes([0x10]) + self.varint(len(body)) + body)
        ack = b""
        while len(ack) < 4:
            chunk = self.s.recv(4 - len(ack))
            if not chunk: raise RuntimeError("raw publisher: connection closed before CONNACK")
            ack += chunk
        if ack[0] != 0x20 or ack[3] != 0: raise RuntimeError(f"raw publisher: refused ({ack.hex()})")
        self.s.settimeout(None)
        self.pid = 0
        threading.Thread(target=self.drain, daemon=True).start()
    @staticmethod
    def varint(n):
        out = b""
        while True:
            b, n = n % 128, n // 128
            out += bytes([b | (128 if n else 0)])
            if not n: return out
    def publish(self, topic, payload):
        self.pid = self.pid % 65535 + 1
        t = topic.encode(); p = payload.encode() if isinstance(payload, str) else payload
        body = len(t).to_bytes(2, "big") + t + self.pid.to_bytes(2, "big") + p
        self.s.sendall(bytes([0x32]) + self.varint(len(body)) + body)
    def drain(self):
        try:
            while self.s.recv(4096): pass
        except OSError:
            pass
    def stop(self): self.s.close()

def context_switches(pid):
    """Voluntary and involuntary context switches of all the process's threads so far."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for l in open(f"/proc/{pid}/task/{t}/status"):
                if "ctxt_switches" in l: n += int(l.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return n

def proc_cpu_rss(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(st[11]) + int(st[12])
    rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
    return ticks / CLK, int(rss) / 1024


def proc_memory(pid):
    """From /proc/PID/smaps_rollup, MiB: own memory (Private_Dirty: heap, stacks, written data,
    which the kernel cannot take back), PSS (shared pages split among their users) and RSS (which
    also counts clean file pages of the executable and libc that the kernel drops by itself)."""
    out = {}
    for l in open(f"/proc/{pid}/smaps_rollup"):
        f = l.split()
        if f and f[0] in ("Rss:", "Pss:", "Private_Dirty:"): out[f[0][:-1]] = int(f[1]) / 1024
    return {"own": out["Private_Dirty"], "pss": out["Pss"], "rss": out["Rss"]}

def stripped_size(binary):
    """Size in MiB of the executable stripped of symbols and debug info (what a site installs)."""
    dst = os.path.join(TMP, "gateway-stripped")
    subprocess.run(["strip", "-o", dst, binary], check=True)
    return os.path.getsize(dst) / 1048576

#!/usr/bin/env python3
"""The gateway's own part of a command (not a test): runs `command_bench.py GATEWAY_BIN COMMANDS`
and, while it sends commands, `perf trace` on the gateway's socket calls. For each command: the
read of its PUBLISH on the MQTT socket -> the PUBACK written -> the request sent on the Modbus
socket (kernel-side times, so the broker, Python and the simulator are out of it; tracing adds
a few tens of microseconds to each call, so compare builds with each other, not with
command_bench's figures). Needs `perf` (Debian: linux-perf) and the right to trace.
Usage: command_trace.py GATEWAY_BIN [COMMANDS]"""
import os, re, subprocess, sys, tempfile

BIN = os.path.abspath(sys.argv[1])
N = sys.argv[2] if len(sys.argv) > 2 else "300"
here = os.path.dirname(os.path.abspath(__file__))
out = tempfile.mktemp(prefix="command-trace-")
bench = subprocess.Popen([sys.executable, os.path.join(here, "command_bench.py"), BIN, N], cwd=here,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
# The gateway the benchmark started: it says which (reading waits for the line; it ends if
# the benchmark ends without it).
first, pid = "", None
for l in bench.stdout:
    first += l
    m = re.match(r"gateway pid (\d+)", l)
    if m:
        pid = m[1]
        break
if pid is None:
    bench.kill()
    sys.exit(f"the benchmark did not start its gateway:\n{first.strip()}")
tracer = subprocess.Popen(["perf", "trace", "-p", pid, "-o", out, "-e", "read,write,sendto,recvfrom"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
report = first + bench.communicate(timeout=600)[0]
tracer.terminate()
tracer.wait(10)
print(report.strip())

# "  1069.724 ( 0.044 ms): NIO-SGLTN-1-#1/28358 read(fd: 15, buf: ..., count: 2048)  = 37"
line = re.compile(r'\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+)/\d+ (\w+)\(fd: (\d+).*?= (\d+)')
events = sorted((float(m[1]) + float(m[2]), m[3], m[4], int(m[5]), int(m[6]))
                for m in map(line.match, open(out)) if m)
os.unlink(out)
to_ack, to_send, read = [], [], None
for t, thread, call, fd, n in events:
    if call == "read" and thread.startswith("NIO") and n >= 30:   # a PUBLISH of a command
        read = (t, fd)
    elif read and call == "write" and fd == read[1] and n == 4:   # its PUBACK
        to_ack.append(t - read[0])
    elif read and call == "sendto":                               # the Modbus request
        if t - read[0] < 5: to_send.append(t - read[0])
        read = None

def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * q))]
if not to_send: sys.exit("no command seen in the trace")
print(f"traced, PUBLISH read -> Modbus request sent: p50 {pct(to_send, .5):.3f} ms, p95 {pct(to_send, .95):.3f} ms "
      f"({len(to_send)} commands matched; polls in between are not counted)")
if to_ack: print(f"traced, PUBLISH read -> PUBACK written: p50 {pct(to_ack, .5):.3f} ms")

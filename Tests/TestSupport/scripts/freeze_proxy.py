#!/usr/bin/env python3
"""A TCP proxy on loopback that can freeze: `freeze_proxy.py TARGET_PORT` listens on a free
127.0.0.1 port, prints `listening PORT`, and forwards every connection to 127.0.0.1:TARGET_PORT.
A line `freeze` on stdin stops all forwarding: both sockets of every connection stay open and
nothing passes either way (a broker host that lost power, a NAT that dropped the mapping: a
half-open link). It prints `frozen`. Ends when stdin closes."""
import socket, sys, threading

target = int(sys.argv[1])
frozen = threading.Event()
held = []   # every socket, so that none is closed (collected) once its pumps stop
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print("listening", listener.getsockname()[1], flush=True)

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data or frozen.is_set():
                break   # frozen: stop reading; the socket stays open, the peer's data piles up
            dst.sendall(data)
    except OSError:
        pass

def accept():
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        held.extend((client, upstream))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
for line in sys.stdin:
    if line.strip() == "freeze":
        frozen.set()
        print("frozen", flush=True)

#!/usr/bin/env python3
"""A TCP proxy on loopback that says when each packet a client sent reached it, by the kernel's
receive stamp (SO_TIMESTAMPNS), not by when this process got round to reading it.

`stamp_proxy.py mqtt:BROKER_PORT modbus:DEVICE_PORT` listens on a free 127.0.0.1 port for each
pair, prints `listening NAME PORT` for each, then `ready`, and forwards every connection to
127.0.0.1:TARGET_PORT. For each whole packet a client sends it prints one line:
  mqtt <ns> <packet type>                         (MQTT fixed header: 3 PUBLISH, 4 PUBACK, ...)
  modbus <ns> <function code> <address>           (Modbus TCP: MBAP header, then the PDU)
<ns> is the CLOCK_REALTIME stamp, in nanoseconds, of the segment that completed the packet: the
moment the sender's write delivered it (on loopback, within the sender's system call). Two
packets that one thread sent one after the other, to two of these ports, are stamped in that
order. Ends when stdin closes."""
import socket, struct, sys, threading

# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) on x86-64 and arm64; Python's socket module does
# not name it.
SO_TIMESTAMPNS = 35
out = threading.Lock()
held = []   # every socket, so that none is collected while its pump runs

def say(line):
    with out:
        print(line, flush=True)

def mqtt_frames(buf):
    """Whole MQTT packets at the front of buf: yields (type, length), leaves the rest."""
    i = 0
    while i < len(buf):
        n, mult, j = 0, 1, i + 1
        while True:
            if j >= len(buf): return
            n += (buf[j] & 127) * mult
            mult *= 128
            j += 1
            if buf[j - 1] < 128: break
        if j + n > len(buf): return
        yield buf[i] >> 4, j + n - i, ""
        i = j + n

def modbus_frames(buf):
    i = 0
    while i + 6 <= len(buf):
        n = 6 + struct.unpack(">H", buf[i + 4:i + 6])[0]
        if i + n > len(buf): return
        pdu = buf[i + 7:i + n]
        address = struct.unpack(">H", pdu[1:3])[0] if len(pdu) >= 3 else -1
        yield (pdu[0] if pdu else -1), n, f" {address}"
        i += n

def pump_stamped(name, frames, src, dst):
    buf = b""
    try:
        while True:
            data, anc, _, _ = src.recvmsg(65536, 64)
            if not data: break
            ns = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    ns = sec * 1_000_000_000 + nsec
            dst.sendall(data)
            buf += data
            used = 0
            for kind, length, rest in frames(buf):
                say(f"{name} {ns} {kind}{rest}")
                used += length
            buf = buf[used:]
    except OSError:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data: break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass

def serve(name, listener, target):
    frames = mqtt_frames if name == "mqtt" else modbus_frames
    while True:
        client, _ = listener.accept()   # stamping is inherited from the listener
        upstream = socket.create_connection(("127.0.0.1", target))
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        held.extend((client, upstream))
        threading.Thread(target=pump_stamped, args=(name, frames, client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

for arg in sys.argv[1:]:
    name, target = arg.split(":")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held.append(listener)
    say(f"listening {name} {listener.getsockname()[1]}")
    threading.Thread(target=serve, args=(name, listener, int(target)), daemon=True).start()
say("ready")
for _ in sys.stdin:
    pass

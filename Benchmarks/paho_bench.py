#!/usr/bin/env python3
"""The same job as `gateway-bench mqtt` with paho-mqtt 2.x: N messages of S bytes, W in flight."""
import sys
import threading
import time
import resource

import paho.mqtt.client as mqtt

port = int(sys.argv[1]); count = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
size = 16; window = 100
payload = b"A" * size
for qos in (0, 1, 2):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-bench-{qos}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    sem = threading.Semaphore(window)
    def on_publish(client, userdata, mid, rc, props):
        sem.release()
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for i in range(count):
        sem.acquire()
        c.publish(f"bench/{qos}", payload, qos=qos)
    for _ in range(window):
        sem.acquire()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"paho QoS {qos}: {count} messages of {size} B, {window} in flight: {int(count/dt)} msg/s ({dt:.2f} s), peak RSS {rss} MiB")
    c.disconnect(); c.loop_stop()

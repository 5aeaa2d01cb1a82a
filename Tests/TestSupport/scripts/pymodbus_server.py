#!/usr/bin/env python3
"""An independent Modbus peer for tests: pymodbus (pinned in scripts/requirements-test.txt).

Usage:
  pymodbus_server.py --tcp 127.0.0.1:0 --spec '{"1": {"hr": {"100": 215}}, "2": {...}}'
  pymodbus_server.py --rtu /dev/pts/7 --baud 19200 --spec '...' [--log-requests]
Spec per unit: tables "co", "di", "hr", "ir" mapping address -> value. With "sparse": true only the
listed addresses exist (others answer ILLEGAL DATA ADDRESS); otherwise addresses 0..999 exist.
With --log-requests every request received, for a served unit or not, prints one line
{"request":{"unit":3,"fc":3,"mono_us":...}} (CLOCK_MONOTONIC, as `gateway simulate` does).
With --framer rtu a TCP server speaks RTU frames over TCP (a serial device server). --identity
VENDOR,PRODUCT,REVISION answers Read Device Identification (FC 43/14) with those basic objects.
Prints "listening tcp HOST:PORT" / "listening rtu PATH" once serving; stops on SIGTERM.
"""
import argparse
import asyncio
import json
import signal
import sys
import time

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext, ModbusSparseDataBlock)
from pymodbus import FramerType
from pymodbus.device import ModbusDeviceIdentification
from pymodbus.server import ModbusSerialServer, ModbusTcpServer


def block(table, sparse):
    # pymodbus adds 1 to every protocol address before looking it up: store at address + 1.
    values = {int(a) + 1: int(v) for a, v in table.items()}
    if sparse:
        return ModbusSparseDataBlock(values if values else {1: 0})
    data = [0] * 1001
    for a, v in values.items():
        if 0 <= a <= 1000:
            data[a] = v
    return ModbusSequentialDataBlock(0, data)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp")
    p.add_argument("--rtu")
    p.add_argument("--baud", type=int, default=19200)
    p.add_argument("--spec", default='{"1": {}}')
    p.add_argument("--log-requests", action="store_true")
    p.add_argument("--framer", choices=["socket", "rtu"], default="socket")
    p.add_argument("--identity")
    a = p.parse_args()

    def trace_pdu(sending, pdu):
        if not sending:
            us = time.monotonic_ns() // 1000
            print(json.dumps({"request": {"unit": pdu.dev_id, "fc": pdu.function_code, "mono_us": us}},
                             separators=(",", ":")), flush=True)
        return pdu
    trace = {"trace_pdu": trace_pdu} if a.log_requests else {}
    spec = json.loads(a.spec)
    slaves = {}
    for unit, tables in spec.items():
        sparse = bool(tables.get("sparse", False))
        slaves[int(unit)] = ModbusSlaveContext(
            co=block(tables.get("co", {}), sparse), di=block(tables.get("di", {}), sparse),
            hr=block(tables.get("hr", {}), sparse), ir=block(tables.get("ir", {}), sparse))
    context = ModbusServerContext(slaves=slaves, single=False)
    if a.identity:
        vendor, product, revision = a.identity.split(",")
        trace["identity"] = ModbusDeviceIdentification(info_name={
            "VendorName": vendor, "ProductCode": product, "MajorMinorRevision": revision})
    if a.tcp:
        host, port = a.tcp.rsplit(":", 1)
        framer = FramerType.RTU if a.framer == "rtu" else FramerType.SOCKET
        server = ModbusTcpServer(context, address=(host, int(port)), framer=framer, ignore_missing_slaves=True, **trace)
    else:
        server = ModbusSerialServer(context, port=a.rtu, baudrate=a.baud, ignore_missing_slaves=True, **trace)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await server.serve_forever(background=True)
    if a.tcp:
        bound = server.transport.sockets[0].getsockname()[1]
        print(f"listening tcp {host}:{bound}", flush=True)
    else:
        print(f"listening rtu {a.rtu}", flush=True)
    await stop.wait()
    await server.shutdown()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

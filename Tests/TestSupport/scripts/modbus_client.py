#!/usr/bin/env python3
"""An independent Modbus TCP client for tests: pymodbus (pinned in scripts/requirements-test.txt).

Usage: modbus_client.py --port PORT [--clients N] OP...
OP: read:UNIT:TABLE:ADDR:COUNT   (TABLE: co, di, hr, ir)
    write:UNIT:co:ADDR:0|1       (FC 5)
    write:UNIT:hr:ADDR:VALUE     (FC 6)
    writes:UNIT:hr:ADDR:V1,V2    (FC 16)
    flood:UNIT:hr:ADDR:COUNT     (that many reads back to back; prints how many succeeded)
With --clients N, N connections run the ops at once (each its own client).
Prints one JSON line per op and client: {"client":0,"op":"...","ok":true,"value":[...]} or
{"client":0,"op":"...","ok":false,"exception":11} (or "error": "..." without an answer).
"""
import argparse
import asyncio
import json

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


async def run_op(client, op):
    kind, unit, table, addr, arg = op.split(":")
    unit, addr = int(unit), int(addr)
    try:
        if kind == "read":
            fn = {"co": client.read_coils, "di": client.read_discrete_inputs,
                  "hr": client.read_holding_registers, "ir": client.read_input_registers}[table]
            r = await fn(addr, count=int(arg), slave=unit)
        elif kind == "write" and table == "co":
            r = await client.write_coil(addr, arg == "1", slave=unit)
        elif kind == "write":
            r = await client.write_register(addr, int(arg), slave=unit)
        elif kind == "writes":
            r = await client.write_registers(addr, [int(v) for v in arg.split(",")], slave=unit)
        elif kind == "flood":
            ok = 0
            for _ in range(int(arg)):
                r = await client.read_holding_registers(addr, count=1, slave=unit)
                if not r.isError():
                    ok += 1
            return {"ok": True, "value": [ok]}
        else:
            return {"ok": False, "error": "unknown op"}
    except ModbusException as e:
        return {"ok": False, "error": str(e)}
    if r.isError():
        return {"ok": False, "exception": getattr(r, "exception_code", None)}
    value = None
    if kind == "read" and table in ("co", "di"):
        value = [int(b) for b in r.bits[:int(arg)]]
    elif kind == "read":
        value = list(r.registers)
    return {"ok": True, "value": value}


async def one_client(index, port, ops):
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    await client.connect()
    out = []
    for op in ops:
        res = await run_op(client, op)
        res.update({"client": index, "op": op})
        out.append(res)
    client.close()
    return out


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("ops", nargs="+")
    a = p.parse_args()
    results = await asyncio.gather(*(one_client(i, a.port, a.ops) for i in range(a.clients)))
    for rs in results:
        for r in rs:
            print(json.dumps(r, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""An independent TOML reader for differential tests: Python's tomllib (3.11+).

Usage: toml_oracle.py DIR. For every DIR/*.toml prints one line "NAME<TAB>ok<TAB>CANONICAL" or
"NAME<TAB>error<TAB>MESSAGE". CANONICAL is a type-tagged text of the document (tables with sorted
keys, strings as UTF-8 hex, floats as their IEEE-754 bits), the same that the Swift test builds.
"""
import datetime, os, struct, sys, tomllib

def canon(v):
    if isinstance(v, bool):
        return "b:" + ("true" if v else "false")
    if isinstance(v, int):
        return "i:" + str(v)
    if isinstance(v, float):
        return "f:nan" if v != v else "f:" + struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "s:" + v.encode("utf-8").hex()
    if isinstance(v, datetime.datetime):
        return "d:offset date-time" if v.tzinfo is not None else "d:local date-time"
    if isinstance(v, datetime.date):
        return "d:local date"
    if isinstance(v, datetime.time):
        return "d:local time"
    if isinstance(v, list):
        return "[" + ",".join(canon(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(sorted(k.encode("utf-8").hex() + "=" + canon(x) for k, x in v.items())) + "}"
    raise TypeError(type(v))

d = sys.argv[1]
for name in sorted(os.listdir(d)):
    if not name.endswith(".toml"):
        continue
    with open(os.path.join(d, name), "rb") as f:
        data = f.read()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
        print(f"{name}\tok\t{canon(doc)}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as e:
        print(f"{name}\terror\t{str(e).splitlines()[0] if str(e) else type(e).__name__}")

#!/usr/bin/env python3
"""Regenerates Sources/GatewayConfig/HomeAssistantRules.swift from a Home Assistant release wheel.

Usage: scripts/ha-rules.py homeassistant-X-py3-none-any.whl > Sources/GatewayConfig/HomeAssistantRules.swift
(get the wheel with `pip download homeassistant==X --no-deps --python-version 3.14 --only-binary=:all:`,
or from https://pypi.org/simple/homeassistant/). The wheel is read, never run: Python 3.11 parses
its sources (ast) and evaluates only the literal tables: the device classes per platform, the units
per device class (sensor and number), the state classes, and the limits the MQTT platforms check."""
import ast, re, sys, zipfile

wheel = zipfile.ZipFile(sys.argv[1])
# The version from the wheel's own metadata (the file may have been renamed).
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
version = re.search(r"^Version: (.+)$", wheel.read(meta).decode(), re.M).group(1).strip()

def source(path):
    return ast.parse(wheel.read(path).decode())

def enums_and_constants(tree, names):
    """StrEnum classes (name -> {member: value}) and string constants of a module, into `names`."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = {}
            for item in node.body:
                if isinstance(item, (ast.Assign, ast.AnnAssign)) and isinstance(item.value, ast.Constant) and isinstance(item.value.value, str):
                    target = item.targets[0] if isinstance(item, ast.Assign) else item.target
                    if isinstance(target, ast.Name): members[target.id] = item.value.value
            if members: names[node.name] = members
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                names[target.id] = node.value.value
            elif isinstance(target, ast.Name) and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name):
                enum = names.get(node.value.value.id)
                if isinstance(enum, dict) and node.value.attr in enum: names[target.id] = enum[node.value.attr]

def evaluate(node, names):
    """The value of a table entry: a string, None, an enum member, or a set of them."""
    if isinstance(node, ast.Constant): return node.value
    if isinstance(node, ast.Name):
        v = names[node.id]
        return v
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return names[node.value.id][node.attr]
    if isinstance(node, ast.Set): return set().union(*[as_set(evaluate(e, names)) for e in node.elts]) if node.elts else set()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set":
        return as_set(evaluate(node.args[0], names))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return as_set(evaluate(node.left, names)) | as_set(evaluate(node.right, names))
    if isinstance(node, ast.Starred): return as_set(evaluate(node.value, names))
    raise ValueError(ast.dump(node))

def as_set(v):
    if isinstance(v, dict): return set(v.values())
    if isinstance(v, set): return v
    return {v}

def table(tree, name, names):
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            out = {}
            for k, v in zip(node.value.keys, node.value.values):
                out[evaluate(k, names)] = evaluate(v, names)
            return out
    raise KeyError(name)

names = {}
enums_and_constants(source("homeassistant/const.py"), names)
sensor = source("homeassistant/components/sensor/const.py"); enums_and_constants(sensor, names)
number = source("homeassistant/components/number/const.py"); enums_and_constants(number, names)
classes = {}
for platform, path, enum in [("sensor", "sensor/const.py", "SensorDeviceClass"), ("binary_sensor", "binary_sensor/const.py", "BinarySensorDeviceClass"),
                             ("number", "number/const.py", "NumberDeviceClass"), ("switch", "switch/const.py", "SwitchDeviceClass"),
                             ("button", "button/const.py", "ButtonDeviceClass"), ("event", "event/const.py", "EventDeviceClass")]:
    ns = {}
    enums_and_constants(source("homeassistant/components/" + path), ns)
    classes[platform] = sorted(ns[enum].values())
sensor_units = table(sensor, "DEVICE_CLASS_UNITS", names)
number_units = table(number, "DEVICE_CLASS_UNITS", names)
state_classes = sorted(names["SensorStateClass"].values())
state_class_units = table(sensor, "STATE_CLASS_UNITS", names)
ambiguous = table(sensor, "AMBIGUOUS_UNITS", names)
max_text = names["MAX_LENGTH_STATE_STATE"]

# Discovery schemas: the keys each MQTT platform takes (an unknown key is dropped by Home
# Assistant), and the ones it requires. Module-level schema expressions of the mqtt package are
# walked: keys of dict literals (not into their values, which are sub-schemas of one key), through
# `.extend(...)`, `probatio.Schema/All(...)` and names of other schemas.
mqtt_files = [n for n in wheel.namelist() if n.startswith("homeassistant/components/mqtt/") and n.endswith(".py") and n.count("/") == 3]
schema_exprs = {}   # (file, name) -> expr
constants = dict((k, v) for k, v in names.items() if isinstance(v, str))
def collect(tree, file):
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and node.value is not None:
            schema_exprs[(file, target.id)] = node.value
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str): constants[target.id] = node.value.value
trees = {}
for f in mqtt_files:
    try:
        trees[f] = source(f)
    except SyntaxError as e:   # Python 3.14 syntax this Python cannot read: not a schema module
        print(f"skipped {f}: {e.msg} (line {e.lineno})", file=sys.stderr)
for f, t in trees.items(): collect(t, f)
for f, t in trees.items():   # second pass: constants defined from others
    for node in t.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Name) and node.value.id in constants:
            constants[node.targets[0].id] = constants[node.value.id]

def lookup(name, file):
    if (file, name) in schema_exprs: return file, schema_exprs[(file, name)]
    for (f, n), e in schema_exprs.items():
        if n == name: return f, e
    return None, None

def schema_keys(node, file, seen=None):
    seen = seen if seen is not None else set()
    keys, required = set(), set()
    def walk(n):
        if isinstance(n, ast.Dict):
            for k in n.keys:
                if isinstance(k, ast.Call) and isinstance(k.func, ast.Attribute) and k.func.attr in ("Optional", "Required", "Inclusive", "Exclusive") and k.args:
                    a = k.args[0]
                    key = a.value if isinstance(a, ast.Constant) else constants.get(a.id) if isinstance(a, ast.Name) else None
                    if key is None: continue
                    keys.add(key)
                    if k.func.attr == "Required": required.add(key)
            return
        if isinstance(n, ast.Call):
            walk(n.func)
            for a in n.args: walk(a)
            return
        if isinstance(n, ast.Attribute): walk(n.value); return
        if isinstance(n, ast.Name):
            f, e = lookup(n.id, file)
            if e is not None and (f, n.id) not in seen:
                seen.add((f, n.id)); walk_in(e, f)
            return
    def walk_in(e, f):
        k, r = schema_keys(e, f, seen); keys.update(k); required.update(r)
    walk(node)
    return keys, required

discovery = {}
for platform in ["binary_sensor", "sensor", "switch", "button", "number", "select", "lock", "text", "event"]:
    f = f"homeassistant/components/mqtt/{platform}.py"
    keys, required = schema_keys(schema_exprs[(f, "DISCOVERY_SCHEMA")], f)
    discovery[platform] = (sorted(keys | {"platform"}), sorted(required))

def swift(s): return "nil" if s is None else '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
def units(t):
    return "[\n" + "".join(f"        {swift(k)}: [{', '.join(swift(u) for u in sorted(v, key=lambda x: (x is not None, x or '')))}],\n" for k, v in sorted(t.items())) + "    ]"

print(f"""// Generated by scripts/ha-rules.py from the homeassistant {version} wheel: do not edit.
// What Home Assistant's MQTT platforms accept, as its release validates discovery configs.

/// Home Assistant's rules for the values a point's `ha` table passes through.
public enum HomeAssistantRules {{
    /// The release the tables come from.
    public static let version = "{version}"

    /// Device classes per platform.
    public static let deviceClasses: [String: Set<String>] = [
""" + "".join(f"        {swift(p)}: [{', '.join(swift(c) for c in cs)}],\n" for p, cs in sorted(classes.items())) + f"""    ]

    /// Units a sensor of a device class may have (nil: none); a class not listed takes any.
    public static let sensorUnits: [String: Set<String?>] = {units(sensor_units)}

    /// Units a number of a device class may have (nil: none); a class not listed takes any.
    public static let numberUnits: [String: Set<String?>] = {units(number_units)}

    /// A sensor's state classes.
    public static let stateClasses: Set<String> = [{', '.join(swift(s) for s in state_classes)}]

    /// Units a state class requires.
    public static let stateClassUnits: [String: Set<String?>] = {units(state_class_units)}

    /// Units Home Assistant rewrites before it checks them.
    public static let ambiguousUnits: [String: String] = [
""" + "".join(f"        {swift(k)}: {swift(v)},\n" for k, v in sorted(ambiguous.items())) + f"""    ]

    /// The keys each platform's discovery schema takes (others are dropped), and those it requires.
    public static let discoveryKeys: [String: (allowed: Set<String>, required: Set<String>)] = [
""" + "".join(f"        {swift(p)}: ([{', '.join(swift(k) for k in a)}], [{', '.join(swift(k) for k in r)}]),\n" for p, (a, r) in sorted(discovery.items())) + f"""    ]

    /// A text entity's longest value (`max`).
    public static let maxTextLength = {max_text}
    /// A number's smallest `step`.
    public static let minimumNumberStep = 0.001
}}""")

#!/usr/bin/env python3
"""Python's protobuf library as an independent peer for Tollgate's messages.

The Swift tests drive this script; nothing here shares code with the Swift
side. Python modules are generated with `protoc --python_out` from the same
proto/ directory at run time.

  proto_peer.py samples <proto-dir> <out-dir>
      Writes, for every message type, one empty and several fully populated
      random messages (every field set, every oneof member used in turn,
      unknown enum numbers included) plus manifest.json.
  proto_peer.py check <proto-dir> <out-dir>
      Parses each <sample>.swift.bin the Swift side re-encoded and compares it
      with the original message; prints a summary, exits 1 on any mismatch.
  proto_peer.py to-json <proto-dir> <type> <file>
      Decodes a Swift-encoded file and prints it as JSON (proto field names).
  proto_peer.py from-json <proto-dir> <type> <json-file> <out-file>
      Encodes a message from JSON with Python's library.
  proto_peer.py unknown <proto-dir> <type> <in-file> <out-file>
      Parses bytes carrying fields the schema does not declare, prints as
      JSON the unknown field numbers Python kept in each message (keyed by
      the path of set message fields, "" for the top), and writes Python's
      re-serialization, which should carry them all.
"""

import importlib
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format
from google.protobuf import message_factory

FD = _descriptor.FieldDescriptor
STRINGS = ["", "a", "Tollgate", "ünïcödé", "日本語のテキスト", "emoji 🚦", "x" * 300, "line\nbreak", "quote\"and\\slash"]
UNKNOWN_ENUM_NUMBER = 4242


def load_pool(proto_dir):
    out = tempfile.mkdtemp(prefix="tollgate-py-")
    protos = []
    for root, _, files in os.walk(proto_dir):
        for name in files:
            if name.endswith(".proto"):
                protos.append(os.path.relpath(os.path.join(root, name), proto_dir))
    subprocess.run(["protoc", "--python_out=" + out, "-I", proto_dir] + sorted(protos), check=True)
    sys.path.insert(0, out)
    for proto in protos:
        importlib.import_module(proto[:-len(".proto")].replace("/", ".") + "_pb2")
    from google.protobuf import descriptor_pool
    return descriptor_pool.Default(), sorted(protos)


def message_types(pool, protos):
    found = []

    def walk(desc):
        found.append(desc)
        for nested in desc.nested_types:
            walk(nested)

    for proto in protos:
        for desc in pool.FindFileByName(proto).message_types_by_name.values():
            walk(desc)
    return sorted(found, key=lambda d: d.full_name)


def message_class(desc):
    return message_factory.GetMessageClass(desc)


def scalar(field, rng):
    t = field.type
    if t == FD.TYPE_STRING:
        return rng.choice(STRINGS[1:])
    if t == FD.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b"\x00\xff"
    if t == FD.TYPE_BOOL:
        return True
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return rng.choice([-(2 ** 31), -1, 1, 2 ** 31 - 1, rng.randrange(-(2 ** 31), 2 ** 31)])
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return rng.choice([-(2 ** 63), -1, 1, 2 ** 63 - 1, rng.randrange(-(2 ** 63), 2 ** 63)])
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return rng.choice([1, 2 ** 32 - 1, rng.randrange(1, 2 ** 32)])
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return rng.choice([1, 2 ** 64 - 1, rng.randrange(1, 2 ** 64)])
    if t == FD.TYPE_DOUBLE:
        return rng.choice([-1.5, 3.141592653589793, 1e300, rng.uniform(-1e6, 1e6)])
    if t == FD.TYPE_FLOAT:
        return struct.unpack("f", struct.pack("f", rng.uniform(-1e6, 1e6)))[0]
    if t == FD.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values if v.number != 0]
        if rng.random() < 0.15 or not numbers:
            return UNKNOWN_ENUM_NUMBER  # proto3 enums are open: must round-trip
        return rng.choice(numbers)
    raise ValueError("unhandled field type %d" % t)


def populate(message, rng, variant, depth):
    desc = message.DESCRIPTOR
    chosen = {}
    for oneof in desc.oneofs:
        fields = list(oneof.fields)
        chosen[oneof.name] = fields[variant % len(fields)].name
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] != field.name:
            continue
        repeated = field.is_repeated
        if field.type == FD.TYPE_MESSAGE:
            if depth <= 0:
                continue
            if repeated:
                for _ in range(rng.randrange(1, 3)):
                    populate(getattr(message, field.name).add(), rng, variant + 1, depth - 1)
            else:
                sub = getattr(message, field.name)
                sub.SetInParent()
                populate(sub, rng, variant, depth - 1)
        elif repeated:
            getattr(message, field.name).extend(scalar(field, rng) for _ in range(rng.randrange(1, 4)))
        elif oneof is not None and oneof.name.startswith("_") and variant % 2 == 1:
            # Presence with the zero value must survive too.
            setattr(message, field.name, field.default_value if field.type != FD.TYPE_ENUM else 0)
        else:
            setattr(message, field.name, scalar(field, rng))


def cmd_samples(proto_dir, out_dir):
    pool, protos = load_pool(proto_dir)
    rng = random.Random(20261127)
    manifest = []
    os.makedirs(out_dir, exist_ok=True)
    for desc in message_types(pool, protos):
        cls = message_class(desc)
        variants = max(3, max((len(o.fields) for o in desc.oneofs), default=0))
        samples = [("empty", cls())]
        for variant in range(variants):
            msg = cls()
            populate(msg, rng, variant, depth=3)
            samples.append(("full%d" % variant, msg))
        for label, msg in samples:
            name = "%s.%s" % (desc.full_name, label)
            with open(os.path.join(out_dir, name + ".bin"), "wb") as f:
                f.write(msg.SerializeToString())
            manifest.append({"type": desc.full_name, "file": name + ".bin"})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote %d samples of %d message types" % (len(manifest), len(set(m["type"] for m in manifest))))


def cmd_check(proto_dir, out_dir):
    pool, _ = load_pool(proto_dir)
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    failures = 0
    identical = 0
    for entry in manifest:
        cls = message_class(pool.FindMessageTypeByName(entry["type"]))
        with open(os.path.join(out_dir, entry["file"]), "rb") as f:
            original_bytes = f.read()
        with open(os.path.join(out_dir, entry["file"] + ".swift.bin"), "rb") as f:
            swift_bytes = f.read()
        original = cls.FromString(original_bytes)
        try:
            decoded = cls.FromString(swift_bytes)
        except Exception as error:  # the peer's own error, reported verbatim
            print("FAIL %s: Python cannot parse Swift's bytes: %s" % (entry["file"], error))
            failures += 1
            continue
        if decoded != original:
            print("FAIL %s: Swift's re-encoding differs\n--- python\n%s--- swift\n%s" % (entry["file"], original, decoded))
            failures += 1
        if swift_bytes == original_bytes:
            identical += 1
    print("checked %d samples: %d failed, %d byte-identical" % (len(manifest), failures, identical))
    sys.exit(1 if failures else 0)


def cmd_to_json(proto_dir, type_name, path):
    pool, _ = load_pool(proto_dir)
    cls = message_class(pool.FindMessageTypeByName(type_name))
    with open(path, "rb") as f:
        msg = cls.FromString(f.read())
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, use_integers_for_enums=False))


def cmd_from_json(proto_dir, type_name, json_path, out_path):
    pool, _ = load_pool(proto_dir)
    cls = message_class(pool.FindMessageTypeByName(type_name))
    with open(json_path) as f:
        msg = json_format.Parse(f.read(), cls())
    with open(out_path, "wb") as f:
        f.write(msg.SerializeToString())


def unknown_numbers(msg, path, out):
    from google.protobuf import unknown_fields
    numbers = [field.field_number for field in unknown_fields.UnknownFieldSet(msg)]
    if numbers:
        out[path] = numbers
    for field, value in msg.ListFields():
        if field.type != FD.TYPE_MESSAGE:
            continue
        prefix = (path + "." if path else "") + field.name
        if field.is_repeated:
            for index, element in enumerate(value):
                unknown_numbers(element, "%s[%d]" % (prefix, index), out)
        else:
            unknown_numbers(value, prefix, out)
    return out


def cmd_unknown(proto_dir, type_name, in_path, out_path):
    pool, _ = load_pool(proto_dir)
    cls = message_class(pool.FindMessageTypeByName(type_name))
    with open(in_path, "rb") as f:
        msg = cls.FromString(f.read())
    with open(out_path, "wb") as f:
        f.write(msg.SerializeToString())
    print(json.dumps(unknown_numbers(msg, "", {}), sort_keys=True))


if __name__ == "__main__":
    commands = {"samples": cmd_samples, "check": cmd_check, "to-json": cmd_to_json, "from-json": cmd_from_json,
                "unknown": cmd_unknown}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])

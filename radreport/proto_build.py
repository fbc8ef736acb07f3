"""Build step for the gRPC API: Python stubs from ``proto/`` with grpcio-tools, and its lock.

``python -m radreport.proto_build`` (run by ``make setup`` and the Docker build) compiles
``proto/radreport/v1/*.proto`` into the ``radreport.v1`` package (``*_pb2.py``, ``*_pb2.pyi``,
``*_pb2_grpc.py``; generated, not committed). ``--update-lock`` rewrites the committed
descriptor set ``proto/radreport/v1/descriptor_set.binpb`` after a deliberate, compatible
change; ``breaking_changes`` is what the tests hold every change of ``radreport.v1`` to.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import DescriptorProto as MessageProto
from google.protobuf.descriptor_pb2 import EnumDescriptorProto as EnumProto
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as FieldProto
from grpc_tools import protoc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = PROJECT_ROOT / "proto"
API_PROTOS = PROTO_ROOT / "radreport" / "v1"
LOCK = API_PROTOS / "descriptor_set.binpb"
GENERATED = PROJECT_ROOT / "radreport" / "v1"


def _protoc(*args: str) -> None:
    well_known = str(files("grpc_tools") / "_proto")
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in API_PROTOS.glob("*.proto"))
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *args,
                        *sources])
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on {', '.join(sources)}")


def generate(out_root: Path = PROJECT_ROOT) -> list[Path]:
    """Compile the API into ``out_root/radreport/v1``; the files written."""
    _protoc(f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}")
    package = out_root / "radreport" / "v1"
    (package / "__init__.py").write_text(
        '"""radreport gRPC API v1: generated from proto/radreport/v1 by radreport.proto_build; '
        'do not edit."""\n')
    return sorted(package.glob("*.py*"))


def descriptor_set(comments: bool = False) -> descriptor_pb2.FileDescriptorSet:
    """The API as it is in ``proto/`` now, compiled; with its comments if asked."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        _protoc(f"--descriptor_set_out={out}", *(["--include_source_info"] if comments else []))
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def locked_descriptor_set(path: Path = LOCK) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def _messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, MessageProto]:
    found: dict[str, MessageProto] = {}

    def visit(prefix: str, message: MessageProto) -> None:
        found[f"{prefix}.{message.name}"] = message
        for nested in message.nested_type:
            visit(f"{prefix}.{message.name}", nested)
    for message in file.message_type:
        visit(file.package, message)
    return found


def _enums(file: descriptor_pb2.FileDescriptorProto) -> dict[str, EnumProto]:
    found = {f"{file.package}.{e.name}": e for e in file.enum_type}
    for name, message in _messages(file).items():
        found.update({f"{name}.{e.name}": e for e in message.enum_type})
    return found


def _reserved(ranges: object, number: int) -> bool:
    return any(r.start <= number < r.end for r in ranges)  # type: ignore[attr-defined]


def _field_shape(message: MessageProto, field: FieldProto) -> tuple[object, ...]:
    oneof = (message.oneof_decl[field.oneof_index].name
             if field.HasField("oneof_index") and not field.proto3_optional else None)
    return (field.name, field.json_name, field.type, field.type_name, field.label,
            field.proto3_optional, oneof)


def _message_changes(name: str, old: MessageProto, new: MessageProto) -> list[str]:
    problems = []
    new_fields = {f.number: f for f in new.field}
    for field in old.field:
        moved = new_fields.get(field.number)
        if moved is None:
            if not _reserved(new.reserved_range, field.number):
                problems.append(f"{name}: field {field.number} ({field.name}) was removed "
                                "without reserving its number")
        elif _field_shape(old, field) != _field_shape(new, moved):
            problems.append(f"{name}: field {field.number} ({field.name}) changed name, "
                            "type, cardinality or oneof")
    return problems


def _enum_changes(name: str, old: EnumProto, new: EnumProto) -> list[str]:
    new_values = {v.number: v.name for v in new.value}
    problems = []
    for value in old.value:
        if value.number not in new_values:
            if not _reserved(new.reserved_range, value.number):
                problems.append(f"{name}: value {value.number} ({value.name}) was removed")
        elif new_values[value.number] != value.name:
            problems.append(f"{name}: value {value.number} renamed {value.name} -> "
                            f"{new_values[value.number]}")
    return problems


def breaking_changes(old: descriptor_pb2.FileDescriptorSet,
                     new: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """What in ``new`` breaks a client or stored message built against ``old``: a removed
    file, message, enum, field, value, service or method; a field renumbered, renamed,
    retyped or moved in or out of a oneof; a method's types or streaming changed."""
    problems: list[str] = []
    new_files = {f.name: f for f in new.file}
    for old_file in old.file:
        new_file = new_files.get(old_file.name)
        if new_file is None:
            problems.append(f"{old_file.name} was removed")
            continue
        if new_file.package != old_file.package:
            problems.append(f"{old_file.name}: package {old_file.package} changed")
            continue
        new_messages, new_enums = _messages(new_file), _enums(new_file)
        for name, message in _messages(old_file).items():
            if name not in new_messages:
                problems.append(f"message {name} was removed")
            else:
                problems += _message_changes(name, message, new_messages[name])
        for name, enum in _enums(old_file).items():
            if name not in new_enums:
                problems.append(f"enum {name} was removed")
            else:
                problems += _enum_changes(name, enum, new_enums[name])
        new_services = {s.name: s for s in new_file.service}
        for service in old_file.service:
            if service.name not in new_services:
                problems.append(f"service {service.name} was removed")
                continue
            new_methods = {m.name: m for m in new_services[service.name].method}
            for method in service.method:
                changed = new_methods.get(method.name)
                if changed is None:
                    problems.append(f"{service.name}.{method.name} was removed")
                elif (method.input_type, method.output_type, method.client_streaming,
                      method.server_streaming) != (
                          changed.input_type, changed.output_type, changed.client_streaming,
                          changed.server_streaming):
                    problems.append(f"{service.name}.{method.name} changed its request, "
                                    "response or streaming")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-lock", action="store_true",
                        help="rewrite the committed descriptor set (refused if it breaks v1)")
    args = parser.parse_args(argv)
    if args.update_lock:
        current = descriptor_set()
        problems = breaking_changes(locked_descriptor_set(), current) if LOCK.exists() else []
        if problems:
            print("breaking changes; make a radreport.v2 package instead:", *problems,
                  sep="\n  ", file=sys.stderr)
            return 1
        LOCK.write_bytes(current.SerializeToString(deterministic=True))
        print(f"wrote {LOCK.relative_to(PROJECT_ROOT)}")
        return 0
    for path in generate():
        print(f"generated {path.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

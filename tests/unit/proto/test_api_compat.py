"""The gRPC API's contract: documented field by field, and never broken within radreport.v1."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from radreport.proto_build import (
    breaking_changes,
    descriptor_set,
    generate,
    locked_descriptor_set,
)

FileSet = descriptor_pb2.FileDescriptorSet
Field = descriptor_pb2.FieldDescriptorProto


@pytest.fixture()
def api() -> FileSet:
    return descriptor_set()


def message(files: FileSet, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for f in files.file for m in f.message_type if m.name == name)


def test_the_api_is_versioned_and_serves_the_four_calls(api: FileSet) -> None:
    assert {f.package for f in api.file} == {"radreport.v1"}
    assert all(f.name.startswith("radreport/v1/") for f in api.file)
    (service,) = [s for f in api.file for s in f.service]
    calls = {m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method}
    assert calls == {
        "Generate": (".radreport.v1.GenerateRequest", ".radreport.v1.Report", False),
        "GenerateStream": (".radreport.v1.GenerateRequest", ".radreport.v1.GenerateEvent",
                           True),
        "GetReport": (".radreport.v1.GetReportRequest", ".radreport.v1.Report", False),
        "ListStudyReports": (".radreport.v1.ListStudyReportsRequest",
                             ".radreport.v1.ListStudyReportsResponse", False)}


def test_the_committed_descriptor_set_is_the_api_and_it_breaks_nothing(api: FileSet) -> None:
    locked = locked_descriptor_set()
    assert breaking_changes(locked, api) == []
    # an addition must be locked deliberately: python -m radreport.proto_build --update-lock
    assert locked == api, "proto/ changed: run python -m radreport.proto_build --update-lock"


def test_every_message_field_enum_value_and_call_is_documented() -> None:
    undocumented = []
    for file in descriptor_set(comments=True).file:
        commented = {tuple(loc.path) for loc in file.source_code_info.location
                     if loc.leading_comments.strip()}
        for m, msg in enumerate(file.message_type):
            paths = {(4, m): msg.name}
            paths |= {(4, m, 2, i): f"{msg.name}.{f.name}" for i, f in enumerate(msg.field)}
            for e, enum in enumerate(msg.enum_type):
                paths |= {(4, m, 4, e, 2, i): f"{msg.name}.{enum.name}.{v.name}"
                          for i, v in enumerate(enum.value) if v.number != 0}
            undocumented += [name for path, name in paths.items() if path not in commented]
        for e, enum in enumerate(file.enum_type):
            paths = {(5, e): enum.name}
            paths |= {(5, e, 2, i): f"{enum.name}.{v.name}" for i, v in enumerate(enum.value)
                      if v.number != 0}  # the UNSPECIFIED zero values explain themselves
            undocumented += [name for path, name in paths.items() if path not in commented]
        for s, service in enumerate(file.service):
            undocumented += [f"{service.name}.{m.name}" for i, m in enumerate(service.method)
                             if (6, s, 2, i) not in commented]
    assert undocumented == []


def changed(api: FileSet, edit: str) -> FileSet:
    new = FileSet()
    new.CopyFrom(api)
    report = message(new, "Report")
    sentence = message(new, "Sentence")
    service = next(s for f in new.file for s in f.service)
    enum = next(e for f in new.file for e in f.enum_type if e.name == "ReportStatus")
    field = next(f for f in report.field if f.name == "study_id")
    if edit == "remove a field":
        report.field.remove(field)
    elif edit == "renumber a field":
        field.number = 99
    elif edit == "retype a field":
        field.type = Field.TYPE_BYTES
    elif edit == "rename a field":
        field.name, field.json_name = "study", "study"
    elif edit == "make a field repeated":
        field.label = Field.LABEL_REPEATED
    elif edit == "remove an enum value":
        del enum.value[-1]
    elif edit == "stop streaming":
        next(m for m in service.method if m.name == "GenerateStream").server_streaming = False
    elif edit == "remove a call":
        del service.method[-1]
    elif edit == "remove a message":
        next(f for f in new.file if sentence in f.message_type).message_type.remove(sentence)
    elif edit == "move a field out of its oneof":
        request = message(new, "GenerateRequest")
        next(f for f in request.field if f.name == "image_url").ClearField("oneof_index")
    return new


@pytest.mark.parametrize("edit", [
    "remove a field", "renumber a field", "retype a field", "rename a field",
    "make a field repeated", "remove an enum value", "stop streaming", "remove a call",
    "remove a message", "move a field out of its oneof"])
def test_breaking_changes_are_caught(api: FileSet, edit: str) -> None:
    assert breaking_changes(api, changed(api, edit)) != []


def test_additions_and_reserved_removals_are_compatible(api: FileSet) -> None:
    new = FileSet()
    new.CopyFrom(api)
    report = message(new, "Report")
    report.field.add(name="priority", json_name="priority", number=40,
                     type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL)
    new.file[0].message_type.add(name="Extra")
    assert breaking_changes(api, new) == []
    gone = next(f for f in report.field if f.name == "fhir_url")
    report.field.remove(gone)
    assert breaking_changes(api, new) == ["radreport.v1.Report: field 21 (fhir_url) was "
                                          "removed without reserving its number"]
    report.reserved_range.add(start=21, end=22)
    assert breaking_changes(api, new) == []


def test_stubs_are_generated_by_grpcio_tools(tmp_path: Path) -> None:
    written = {p.name for p in generate(tmp_path)}
    assert {"report_pb2.py", "report_pb2.pyi", "report_service_pb2.py",
            "report_service_pb2_grpc.py"} <= written
    stub = (tmp_path / "radreport" / "v1" / "report_service_pb2_grpc.py").read_text()
    assert "Generated by the gRPC Python protocol compiler plugin" in stub
    assert "def GenerateStream" in stub

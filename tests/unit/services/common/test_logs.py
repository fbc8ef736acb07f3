"""PHI-safe logging: a library's warning about a malformed UID quotes the raw bytes after it
(patient name, birth date); none of that may reach the log, and every line stays JSON."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.common.logs import WITHHELD, JsonFormatter

CANARIES = ("CANARYFAMILY", "CANARYGIVEN", "CANARYPID9", "19011231", "CANARYDOC")


def _file_whose_uid_swallows_identity(tmp_path: Path) -> Path:
    """A file whose SOP Instance UID's length runs on into the identifying elements."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.ReferringPhysicianName = "CANARYDOC^X"
    ds.PatientName = "CANARYFAMILY^CANARYGIVEN"
    ds.PatientID = "CANARYPID9"
    ds.PatientBirthDate = "19011231"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = bytearray(path.read_bytes())
    at = raw.find(bytes([0x08, 0x00, 0x18, 0x00]) + b"UI", 132 + 12)
    raw[at + 6] += 80  # the length now covers the elements that follow
    path.write_bytes(bytes(raw))
    return path


def test_a_malformed_uid_is_logged_without_the_bytes_it_swallowed(
        json_log: io.StringIO, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_file_whose_uid_swallows_identity(tmp_path))
    assert "CANARYDOC" in repr(ds.SOPInstanceUID.encode("latin-1", "replace"))  # premise
    lines = json_log.getvalue().splitlines()
    assert lines, "pydicom warned about the UID"
    for line in lines:
        entry = json.loads(line)  # every line is JSON, warnings included
        assert not any(canary in line for canary in CANARIES), entry
    loggers = {json.loads(line)["logger"] for line in lines}
    assert {"pydicom", "radreport.warnings"} <= loggers


def test_library_records_keep_their_template_but_not_their_arguments() -> None:
    formatter = JsonFormatter()

    def fmt(name: str, msg: str, *args: object) -> dict[str, str]:
        record = logging.LogRecord(name, logging.ERROR, "/x/lib.py", 7, msg, args, None)
        return json.loads(formatter.format(record))

    assert fmt("pynetdicom.utils", "Invalid '%s' value '%s'", "UID", "CANARYPID9")[
        "message"] == "Invalid '%s' value '%s'"
    assert fmt("pydicom", "Invalid value CANARYPID9")["message"] == WITHHELD
    assert fmt("pydicom", "x")["source"] == "lib.py:7"
    assert fmt("services.dicom.scp", "report %s queued", "r-1")["message"] == "report r-1 queued"


def test_an_exception_is_named_by_type_and_place_not_by_its_message() -> None:
    try:
        raise ValueError("Invalid value for PN: CANARYFAMILY")
    except ValueError:
        record = logging.LogRecord("services.x", logging.ERROR, __file__, 1, "failed", (),
                                   __import__("sys").exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["error"].startswith("ValueError at test_logs.py:")
    assert "CANARY" not in json.dumps(entry)

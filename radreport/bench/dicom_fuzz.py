"""Reproducible hostile DICOM instances and a peer that sends them byte for byte (R3).

Each case starts from a phantom encoded in one of the transfer syntaxes we accept (every
one the phantom writer makes, plus deflated and big endian), then applies one mutation
drawn from a seeded generator: bytes flipped, the file cut short, a length field rewritten,
junk inserted, an element's value replaced with junk or removed, or the File Meta's
transfer syntax changed under the data. The same seed gives the same cases on any machine.
"""

from __future__ import annotations

import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE, _config

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import (
    TRANSFER_SYNTAXES,
    DicomOptions,
    build_dataset,
    write_study_dicom,
)
from services.preprocess.imaging import file_meta_end

BASE_SYNTAXES: tuple[UID, ...] = (*TRANSFER_SYNTAXES, DeflatedExplicitVRLittleEndian,
                                  ExplicitVRBigEndian)
# Elements worth breaking: identifiers, the image pixel module, pixel data.
TARGET_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                   "Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                   "PhotometricInterpretation", "NumberOfFrames", "PixelData", "Modality",
                   "RescaleSlope", "WindowCenter")


@dataclass(frozen=True)
class FuzzCase:
    name: str  # base syntax and mutation, e.g. "1.2.840.10008.1.2.5/flip"
    path: Path
    transfer_syntax: UID  # what the File Meta now says, proposed at association


def base_files(folder: Path, size: int = 256) -> dict[UID, Path]:
    """One phantom per accepted transfer syntax."""
    files: dict[UID, Path] = {}
    for i, syntax in enumerate(BASE_SYNTAXES):
        writer_syntax = syntax if syntax in TRANSFER_SYNTAXES else ExplicitVRLittleEndian
        path = write_study_dicom(generate_study(900 + i, size), folder / f"base-{i}",
                                 DicomOptions("CR", "MONOCHROME2", 12, str(writer_syntax)))
        if syntax != writer_syntax:
            ds = pydicom.dcmread(path)
            ds.file_meta.TransferSyntaxUID = syntax
            pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=syntax.is_little_endian,
                             force_encoding=True)
        files[syntax] = path
    return files


def _meta_end(data: bytes) -> int:
    """Where the dataset starts, after the File Meta group that mutations leave alone."""
    return file_meta_end(data)[0]


Mutation = Callable[[random.Random, bytes, Path], tuple[bytes, UID | None]]


def _flip(rng: random.Random, data: bytes, _path: Path) -> tuple[bytes, UID | None]:
    out, start = bytearray(data), _meta_end(data)
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(start, len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out), None


def _truncate(rng: random.Random, data: bytes, _: Path) -> tuple[bytes, UID | None]:
    start = _meta_end(data)
    return data[:rng.randrange(start + 1, len(data))], None


def _length(rng: random.Random, data: bytes, _: Path) -> tuple[bytes, UID | None]:
    """Rewrite a short (2-byte) or long (4-byte) length field near a random element."""
    out, start = bytearray(data), _meta_end(data)
    position = rng.randrange(start, max(start + 1, min(len(out) - 8, start + 2048)))
    width = rng.choice((2, 4))
    value = rng.choice((0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << (8 * width))))
    out[position:position + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(out), None


def _insert(rng: random.Random, data: bytes, _: Path) -> tuple[bytes, UID | None]:
    position = rng.randrange(_meta_end(data), len(data))
    return data[:position] + rng.randbytes(rng.randint(1, 64)) + data[position:], None


def _edit(rng: random.Random, _: bytes, path: Path) -> tuple[bytes, UID | None]:
    """Replace an element's value with junk of the right type, or remove the element."""
    try:
        return _edited(rng, path)
    except (ValueError, TypeError, OverflowError, struct.error):  # not even writable
        return _flip(rng, path.read_bytes(), path)


def _edited(rng: random.Random, path: Path) -> tuple[bytes, UID | None]:
    ds = pydicom.dcmread(path)
    keyword = rng.choice(TARGET_KEYWORDS)
    if keyword in ds and rng.random() < 0.5:
        delattr(ds, keyword)
    elif keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                     "NumberOfFrames"):
        setattr(ds, keyword, rng.choice((0, 1, 3, 65535, rng.randrange(65536))))
    elif keyword == "PixelData" and keyword in ds:
        junk = rng.randbytes(rng.randint(0, 4096) // 2 * 2)
        encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
        ds.PixelData = encapsulate([junk]) if encapsulated and junk else junk
    else:
        setattr(ds, keyword, rng.choice(("", "0", "1.2.3..4", "NaN", "X" * 70,
                                         "../../etc/passwd", "\\".join("9" * 5))))
    out = path.with_suffix(".edit")
    ds.save_as(out, enforce_file_format=False)
    return out.read_bytes(), None


def _syntax(rng: random.Random, data: bytes, path: Path) -> tuple[bytes, UID | None]:
    """Claim another transfer syntax than the one the data is encoded in."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    choices = [s for s in BASE_SYNTAXES if s != ds.file_meta.TransferSyntaxUID]
    claimed = rng.choice(choices)
    start = _meta_end(data)
    old = str(ds.file_meta.TransferSyntaxUID).encode()
    old_padded = old + (b"\0" if len(old) % 2 else b"")
    new = str(claimed).encode()
    new_padded = new + (b"\0" if len(new) % 2 else b"")
    meta = data[:start].replace(struct.pack("<H", len(old_padded)) + old_padded,
                                struct.pack("<H", len(new_padded)) + new_padded)
    return meta + data[start:], claimed


MUTATIONS: dict[str, Mutation] = {"flip": _flip, "truncate": _truncate, "length": _length,
                                  "insert": _insert, "edit": _edit, "syntax": _syntax}


def cases(folder: Path, count: int, seed: int = 0) -> Iterator[FuzzCase]:
    """``count`` mutated instances, reproducibly from ``seed``."""
    rng = random.Random(seed)
    bases = base_files(folder / "bases")
    syntaxes = sorted(bases)
    for i in range(count):
        syntax = syntaxes[i % len(syntaxes)]
        name = rng.choice(sorted(MUTATIONS))
        with warnings.catch_warnings():  # pydicom warns of the invalid values we mean to write
            warnings.simplefilter("ignore", UserWarning)
            data, claimed = MUTATIONS[name](rng, bases[syntax].read_bytes(), bases[syntax])
        path = folder / f"case-{i:05d}.dcm"
        path.write_bytes(data)
        yield FuzzCase(f"{syntax}/{name}", path, claimed or syntax)


def send_raw(host: str, port: int, case: FuzzCase, called_aet: str = "RADREPORT",
             ) -> int | None:
    """C-STORE the case's bytes as they are; its status, or None if none came back."""
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
                      "1.2.840.10008.5.1.4.1.1.1.1.1"):
        ae.add_requested_context(sop_class, case.transfer_syntax)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate(host, port, ae_title=called_aet)
        if not assoc.is_established:
            return None
        try:
            status = assoc.send_c_store(case.path)
        except (AttributeError, ValueError, OSError):
            assoc.abort()
            return -1  # the peer itself could not send it: no request reached the SCP
        assoc.release()
        return int(status.Status) if "Status" in status else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def deflate_bomb(path: Path, inflated_bytes: int = 200_000_000) -> Path:
    """A Deflated Explicit VR Little Endian instance whose zero pixel data inflates to
    ``inflated_bytes`` (about 1,000 times its size on disk), built in 1 MiB chunks."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    side = int((inflated_bytes // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    pixels = side * side * 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(header.getvalue() + b"\xe0\x7f\x10\x00OW\0\0"
                                + struct.pack("<I", pixels))]
    zeros = bytes(1 << 20)
    for start in range(0, pixels, len(zeros)):
        chunks.append(deflater.compress(zeros[:min(len(zeros), pixels - start)]))
    chunks.append(deflater.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                     ds.SOPInstanceUID)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with path.open("wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
        out.write(b"".join(chunks))
    return path


def png_dimension_bomb(path: Path, side: int = 20000) -> Path:
    """A PNG of a few bytes whose header declares ``side`` x ``side`` pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:  # PNG specification 5.3
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b""))
    return path


def codestream_bomb(path: Path, syntax: str, side: int = 384, factor: int = 3) -> Path:
    """A DICOM whose header says ``side`` px while its compressed frame (JPEG 2000 or
    JPEG-LS, pydicom's encoders) declares ``factor`` times that on each side."""
    import numpy as np

    study = generate_study(7, side)
    options = DicomOptions("DX", "MONOCHROME2", 12, str(ExplicitVRLittleEndian))
    big = build_dataset(study, options)
    big.set_pixel_data(np.tile(big.pixel_array, (factor, factor)), "MONOCHROME2", 12,
                       generate_instance_uid=False)
    big.compress(syntax, generate_instance_uid=False)
    ds = build_dataset(study, DicomOptions("DX", "MONOCHROME2", 12, syntax))
    ds.PixelData = big.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path

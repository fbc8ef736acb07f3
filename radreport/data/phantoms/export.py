"""Write phantom studies the way real datasets arrive: images, a manifest, masks, and DICOM.

Layout of an export folder::

    manifest.jsonl          one JSON object per study (the full ground truth, see record())
    manifest.csv            the same, flat: ids, paths, report sections, 14 label columns
    images/<study_id>.png   16-bit grayscale, MONOCHROME2 (bright = attenuating)
    masks/<study_id>.npz    finding_<i> and anatomy_<name> masks, bit-packed (load_masks)
    dicom/<StudyUID>/<SeriesUID>/<SOPUID>.dcm   when DICOM export is asked for

Generation runs in worker processes; the manifest is written in seed order, so an export is
identical whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from radreport.data.labels import CHEXPERT_LABELS
from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import PhantomStudy

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
CSV_FIELDS = ("study_id", "patient_id", "split", "image", "dicom", "view", "size",
              "pixel_spacing_mm", "findings", "impression", *CHEXPERT_LABELS)


@dataclass(frozen=True)
class ExportJob:
    """One study to render and write; picklable for worker processes."""

    seed: int
    size: int
    out_dir: Path
    split: str | None
    dicom: bool


def record(study: PhantomStudy, split: str | None, image: str, masks: str,
           dicom: str | None) -> dict[str, Any]:
    """The manifest entry: everything a loader or an evaluation needs, masks by reference."""
    return {
        "study_id": study.study_id,
        "seed": study.seed,
        "split": split,
        "image": image,
        "masks": masks,
        "dicom": dicom,
        "size": study.size,
        "pixel_spacing_mm": study.pixel_spacing_mm,
        "view": study.view,
        "patient": {"patient_id": study.patient.patient_id, "age_years": study.patient.age_years,
                    "sex": study.patient.sex},
        "clinical_indication": study.clinical_indication,
        "findings_text": study.findings_text,
        "impression_text": study.impression_text,
        "labels": study.labels,
        "findings": [{"kind": f.kind, "labels": list(f.labels), "side": f.side,
                      "location": f.location, "severity": f.severity, "size_cm": f.size_cm,
                      "box": list(f.box), "attributes": f.attributes}
                     for f in study.findings],
        "sentences": [{"text": s.text, "section": s.section,
                       "finding_indices": list(s.finding_indices), "region": s.region,
                       "box": list(s.box), "mentions": s.mentions}
                      for s in study.sentences],
    }


def save_png16(image: np.ndarray, path: Path) -> None:
    """A [0, 1] float image as a 16-bit grayscale PNG, written atomically."""
    pixels = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(pixels).save(tmp, optimize=False, compress_level=1)
    os.replace(tmp, path)


def load_png16(path: Path) -> np.ndarray:
    """Inverse of :func:`save_png16`."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / 65535.0


def save_masks(study: PhantomStudy, path: Path) -> None:
    """Bit-packed boolean masks (8x less for zlib to chew through than bool bytes)."""
    arrays = {f"finding_{i}": f.mask for i, f in enumerate(study.findings)}
    arrays |= {f"anatomy_{name}": mask for name, mask in study.anatomy.items()}
    packed = {name: np.packbits(mask, axis=None) for name, mask in arrays.items()}
    packed["shape"] = np.array(study.image.shape, dtype=np.int32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **packed)  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_masks(path: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`save_masks`: name -> boolean H x W mask."""
    with np.load(path) as data:
        shape = tuple(int(n) for n in data["shape"])
        count = shape[0] * shape[1]
        return {name: np.unpackbits(data[name], count=count).astype(bool).reshape(shape)
                for name in data.files if name != "shape"}


def write_study(job: ExportJob) -> dict[str, Any]:
    """Render one study and write its files; returns its manifest record."""
    study = generate_study(job.seed, job.size)
    image_rel = f"images/{study.study_id}.png"
    masks_rel = f"masks/{study.study_id}.npz"
    save_png16(study.image, job.out_dir / image_rel)
    save_masks(study, job.out_dir / masks_rel)
    dicom_rel = None
    if job.dicom:
        from radreport.data.phantoms.dicom import write_study_dicom

        path = write_study_dicom(study, job.out_dir / "dicom")
        dicom_rel = path.relative_to(job.out_dir).as_posix()
    return record(study, job.split, image_rel, masks_rel, dicom_rel)


def export_studies(seeds: Iterable[int], size: int, out_dir: Path, *, split: str | None = None,
                   dicom: bool = False, workers: int = 1, append: bool = False,
                   progress: bool = False) -> int:
    """Render and write studies for ``seeds``; returns how many were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(exist_ok=True)
    jobs = [ExportJob(seed, size, out_dir, split, dicom) for seed in seeds]
    mode = "a" if append else "w"
    count = 0
    with open(out_dir / MANIFEST_JSONL, mode) as jsonl, \
            open(out_dir / MANIFEST_CSV, mode, newline="") as flat:
        writer = csv.DictWriter(flat, fieldnames=CSV_FIELDS)
        if not append or flat.tell() == 0:
            writer.writeheader()
        for rec in _run(jobs, workers, progress):
            jsonl.write(json.dumps(rec) + "\n")
            writer.writerow(_csv_row(rec))
            count += 1
    return count


def _run(jobs: list[ExportJob], workers: int, progress: bool) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="study", disable=not progress)
    if workers <= 1:
        for job in jobs:
            yield write_study(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rec in pool.map(write_study, jobs, chunksize=8):
                yield rec
                bar.update()
    bar.close()


def _csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    row = {"study_id": rec["study_id"], "patient_id": rec["patient"]["patient_id"],
           "split": rec["split"] or "", "image": rec["image"], "dicom": rec["dicom"] or "",
           "view": rec["view"], "size": rec["size"], "pixel_spacing_mm": rec["pixel_spacing_mm"],
           "findings": rec["findings_text"], "impression": rec["impression_text"]}
    row |= rec["labels"]
    return row


def read_manifest(out_dir: Path) -> list[dict[str, Any]]:
    with open(out_dir / MANIFEST_JSONL) as fh:
        return [json.loads(line) for line in fh if line.strip()]

"""Export folders hold exactly the generated ground truth, whatever the number of workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radreport.data.contact_sheet import write_contact_sheet
from radreport.data.labels import CHEXPERT_LABELS
from radreport.data.phantoms import generate_study
from radreport.data.phantoms.export import (
    MANIFEST_CSV,
    export_studies,
    load_masks,
    load_png16,
    read_manifest,
)

SEEDS = range(40, 44)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    assert export_studies(SEEDS, 256, out, split="test") == len(SEEDS)
    return out


def test_manifest_matches_the_generator(export_dir: Path) -> None:
    records = read_manifest(export_dir)
    assert [r["seed"] for r in records] == list(SEEDS)
    for rec in records:
        study = generate_study(rec["seed"], 256)
        assert rec["study_id"] == study.study_id and rec["split"] == "test"
        assert rec["findings_text"] == study.findings_text
        assert rec["labels"] == study.labels
        assert [f["box"] for f in rec["findings"]] == [list(f.box) for f in study.findings]
        assert [s["box"] for s in rec["sentences"]] == [list(s.box) for s in study.sentences]
        image = load_png16(export_dir / rec["image"])
        assert np.abs(image - study.image).max() <= 1 / 65535
        masks = load_masks(export_dir / rec["masks"])
        assert set(masks) == {f"finding_{i}" for i in range(len(study.findings))} | {
            f"anatomy_{name}" for name in study.anatomy}
        for i, finding in enumerate(study.findings):
            assert np.array_equal(masks[f"finding_{i}"], finding.mask)
        assert np.array_equal(masks["anatomy_lungs"], study.anatomy["lungs"])


def test_png_is_16_bit_grayscale(export_dir: Path) -> None:
    rec = read_manifest(export_dir)[0]
    with Image.open(export_dir / rec["image"]) as img:
        assert img.mode in ("I;16", "I") and img.size == (256, 256)


def test_csv_is_flat_with_all_labels(export_dir: Path) -> None:
    with open(export_dir / MANIFEST_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(SEEDS)
    assert set(CHEXPERT_LABELS) <= set(rows[0])
    records = read_manifest(export_dir)
    for row, rec in zip(rows, records, strict=True):
        assert row["impression"] == rec["impression_text"]
        assert {k: int(row[k]) for k in CHEXPERT_LABELS} == rec["labels"]


def test_workers_do_not_change_the_export(export_dir: Path, tmp_path: Path) -> None:
    export_studies(SEEDS, 256, tmp_path, split="test", workers=2)
    assert (tmp_path / "manifest.jsonl").read_text() == (export_dir / "manifest.jsonl").read_text()


def test_manifest_is_json_lines(export_dir: Path) -> None:
    lines = (export_dir / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len(SEEDS)
    assert all(json.loads(line)["patient"]["patient_id"].startswith("PHANTOM-") for line in lines)


def test_contact_sheet_shows_every_study(export_dir: Path, tmp_path: Path) -> None:
    out = write_contact_sheet(export_dir, tmp_path / "sheet.png", count=4, columns=2)
    with Image.open(out) as sheet:
        assert sheet.mode == "RGB"
        width, height = sheet.size
        pixels = np.asarray(sheet)
    assert width > height / 2 and height >= 2 * 300
    # boxes are drawn in colour on the grey films: some pixels are clearly not grey
    rgb = pixels.astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).sum() > 50


def test_contact_sheet_of_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(ValueError, match="no studies"):
        write_contact_sheet(tmp_path, tmp_path / "sheet.png")

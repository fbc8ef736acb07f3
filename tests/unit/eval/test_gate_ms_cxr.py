"""``radreport gate --ms-cxr``: on MIMIC-CXR-JPG, MS-CXR's boxes make grounding IoU and the
pointing game measured on the images that have boxes (the same metric functions as phantoms),
where without them those rows are "not measurable" (``test_gate.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radreport.cli import app
from radreport.eval.evaluate import run_model, stated_findings
from radreport.eval.gate import load_cases
from radreport.eval.metrics import grounding_iou, pointing_hit
from radreport.model.report import DEFAULT_MODEL_DIR, MODEL_INFO_FILE, ModelInfo

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
TEST_IMAGE = "a5bd5596-a7eaedf9-a72e8d8b-e1e8fe47-9f7b51dc"  # s50000051, test split
THRESHOLDS = """
[[threshold]]
metric = "Grounding IoU"
min = 0.0
[[threshold]]
metric = "Pointing game"
min = 0.0
"""


@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MIMIC fixture with 256 px images (serving refuses 32 px) and an MS-CXR CSV with a
    box on a test-split image: its lower right quarter, a pleural effusion (the shipped
    model writes about effusions on these noise images, so a sentence pairs with it)."""
    root = tmp_path_factory.mktemp("data") / "mimic"
    shutil.copytree(FIXTURES / "mimic-cxr-jpg", root)
    for jpg in root.rglob("*.jpg"):
        with Image.open(jpg) as img:
            img.convert("L").resize((256, 256)).save(jpg)
    (root / "ms-cxr.csv").write_text(
        "dicom_id,category_name,label_text,x,y,w,h,image_width,image_height\n"
        f"{TEST_IMAGE},Pleural Effusion,pleural effusion,1280,1280,1280,1280,2560,2560\n")
    return root


def test_boxes_are_reference_regions_in_the_models_square(mimic: Path) -> None:
    size = ModelInfo.load(DEFAULT_MODEL_DIR / MODEL_INFO_FILE).image_size
    cases, _, notes = load_cases("mimic-cxr-jpg", mimic, "test", None, 1,
                                 ms_cxr=mimic / "ms-cxr.csv", mask_size=size)
    (boxed,) = [c for c in cases if c.positives]
    (reference,) = boxed.positives
    expected = np.zeros((size, size), bool)
    expected[size // 2 :, size // 2 :] = True  # a square image: no padding
    np.testing.assert_array_equal(reference.mask, expected)
    assert reference.labels == {"Pleural Effusion"}
    assert reference.section == "findings"  # the phrase is in no sentence of this report
    assert "MS-CXR boxes on 1 of them score grounding IoU and pointing" in notes[0]
    with pytest.raises(ValueError, match="not chexpert"):
        load_cases("chexpert", FIXTURES / "chexpert", "test", None, 1,
                   ms_cxr=mimic / "ms-cxr.csv")


def test_gate_measures_grounding_with_ms_cxr(mimic: Path, tmp_path: Path) -> None:
    thresholds = tmp_path / "t.toml"
    thresholds.write_text(THRESHOLDS)
    common = ["gate", str(DEFAULT_MODEL_DIR), "--thresholds", str(thresholds), "--dataset",
              "mimic-cxr-jpg", "--root", str(mimic), "--resamples", "10", "--ood-limit", "2"]
    runner = CliRunner()  # without --ms-cxr: "not measurable" (test_gate.py)
    result = runner.invoke(app, [*common, "--ms-cxr", str(mimic / "ms-cxr.csv"),
                                 "--out", str(tmp_path / "with")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "with" / "gate.json").read_text())
    measured = {r["metric"]: r["value"] for r in report["rows"]}
    assert [r["status"] for r in report["rows"]] == ["pass"] * 2

    # the same numbers by hand: the boxed study's sentences stating an effusion
    size = ModelInfo.load(DEFAULT_MODEL_DIR / MODEL_INFO_FILE).image_size
    cases, _, _ = load_cases("mimic-cxr-jpg", mimic, "test", None, 1,
                             ms_cxr=mimic / "ms-cxr.csv", mask_size=size)
    case = next(c for c in cases if c.positives)
    draft = run_model("c", DEFAULT_MODEL_DIR, [case]).drafts[0]
    mask = case.positives[0].mask
    maps = [s.heatmap for s in draft.sentences if "Pleural Effusion" in stated_findings(s.text)]
    assert maps
    assert measured["Grounding IoU"] == pytest.approx(
        np.mean([grounding_iou(m, mask) for m in maps]))
    assert measured["Pointing game"] == pytest.approx(
        np.mean([pointing_hit(m, mask) for m in maps]))

    bad = runner.invoke(app, [*common, "--ms-cxr", str(mimic / "ms-cxr.csv"), "--dataset",
                              "iu-xray", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "MIMIC-CXR-JPG" in bad.output

"""The input-drift reference shipped beside the model: at the model's own input size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo
from services.preprocess import drift


def test_the_shipped_reference_is_of_the_shipped_model_inputs() -> None:
    size = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json").image_size
    shipped = json.loads((DEFAULT_MODEL_DIR / drift.REFERENCE_FILE).read_text())
    assert shipped["source"] == f"training-split phantoms, letterboxed {size} px model inputs"
    histogram = drift.reference(DEFAULT_MODEL_DIR)
    assert histogram is not None and histogram.shape == (drift.BINS,)
    assert np.isclose(histogram.sum(), 1.0, atol=1e-4)
    # a few training phantoms made the same way land close to it
    again = drift.make_reference(count=4)
    assert again["source"] == shipped["source"]
    assert drift.ks_distance(np.asarray(again["histogram"]), histogram) < 0.05


def test_a_model_folder_without_a_reference_has_none(tmp_path: Path) -> None:
    assert drift.reference(tmp_path) is None

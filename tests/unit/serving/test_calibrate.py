"""INT8 calibration on phantoms: the ranges are the FP32 activations' ranges, and the
TensorRT cache is in the text format ``trtexec --calib`` reads."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from radreport.model.onnx_runtime import OnnxReportModel
from radreport.model.report import DEFAULT_MODEL_DIR, model_files
from radreport.serving.calibrate import TRT_CACHE_HEADER, calibrate, phantom_feeds


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return calibrate(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("calib"), count=1)


def _cache(folder: Path) -> dict[str, float]:
    header, *lines = (folder / "calibration.cache").read_text().splitlines()
    assert header == TRT_CACHE_HEADER
    scales = {}
    for line in lines:
        match = re.fullmatch(r"(.+): ([0-9a-f]{8})", line)
        assert match, line
        scales[match[1]] = struct.unpack(">f", bytes.fromhex(match[2]))[0]
    return scales


def test_encoder_ranges_are_those_of_its_outputs_on_the_phantom(tables: dict[str, Path]) -> None:
    feeds = phantom_feeds(DEFAULT_MODEL_DIR, 1)
    runtime = OnnxReportModel(*model_files(DEFAULT_MODEL_DIR))
    out = runtime.encode(feeds.encoder[0]["image"])
    scales = _cache(tables["encoder"])
    assert scales["memory_kv"] * 127 == pytest.approx(float(np.abs(out.memory_kv).max()), rel=1e-5)
    assert scales["label_probs"] * 127 <= 1.0
    assert all(scale > 0 for scale in scales.values())


def test_decoder_is_calibrated_on_every_cache_length_it_serves(tables: dict[str, Path]) -> None:
    feeds = phantom_feeds(DEFAULT_MODEL_DIR, 1)
    lengths = [feed["past_kv"].shape[4] for feed in feeds.decoder_step]
    assert lengths[0] == 0 and lengths[-1] > 40  # first step (empty cache) to a long report
    runtime = OnnxReportModel(*model_files(DEFAULT_MODEL_DIR))
    first = feeds.decoder_step[0]["tokens"]  # as serving sends it: the prompt, then BOS
    assert runtime.prompt_len > 0 and first.shape == (1, runtime.prompt_len + 1)
    assert first[0, -1] == runtime.bos_id
    scales = _cache(tables["decoder_step"])
    assert {"logits", "present_kv", "cross_attn"} <= set(scales)
    assert scales["cross_attn"] * 127 <= 1.0 + 1e-6  # attention weights


def test_onnx_runtime_table_names_the_same_tensors(tables: dict[str, Path]) -> None:
    for folder in tables.values():
        table = json.loads((folder / "calibration.json").read_text())
        assert set(table["data"]) == set(_cache(folder))
        assert (folder / "calibration.flatbuffers").stat().st_size > 0

"""INT8 calibration of the GPU target on phantoms: activation ranges for TensorRT.

TensorRT's INT8 mode needs a dynamic range per tensor. We collect them with ONNX Runtime's
calibrator (no GPU needed) by running the FP32 graphs on phantoms of the training split:
the encoder on the images, the decoder step on the inputs of every greedy step (the prompt
and BOS first, then one token at a time with a growing KV cache, and the encoder memory),
recorded from the report generator serving runs, so the feeds are exactly what serving
sends. Two files per graph:

- ``calibration.flatbuffers`` (+ ``.json``), ONNX Runtime's table for its TensorRT
  execution provider (``trt_int8_calibration_table_name``): the whole-report model.
- ``calibration.cache``, TensorRT's text cache for ``trtexec --calib`` (the BLS engines):
  a header line, then ``tensor: <big-endian hex of the float32 scale>`` with
  scale = max |activation| / 127.

Neither has been fed to TensorRT here (no GPU on our machines); the ranges are checked
against the FP32 activations in the unit tests.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization.calibrate import (
    CalibrationDataReader,
    CalibrationMethod,
    TensorsData,
    create_calibrator,
)
from onnxruntime.quantization.quant_utils import write_calibration_table

from radreport.eval.evaluate import render_case, split_seeds
from radreport.model.onnx_runtime import EncoderOutput, OnnxReportModel
from radreport.model.report import ModelInfo, ReportGenerator, model_files, to_model_input

# TensorRT checks only that a cache names its calibrator; 10.x writes this header.
TRT_CACHE_HEADER = "TRT-100000-EntropyCalibration2"
GRAPHS = ("encoder", "decoder_step")
Feed = dict[str, np.ndarray]


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[Feed]) -> None:
        self._feeds: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._feeds, None)


@dataclass
class CalibrationFeeds:
    encoder: list[Feed]
    decoder_step: list[Feed]


class _RecordingModel(OnnxReportModel):
    """The in-process graphs, keeping the inputs of the encoder and of every decoder step."""

    def __init__(self, encoder_path: Path, decoder_path: Path) -> None:
        super().__init__(encoder_path, decoder_path)
        self.encoder_feeds: list[Feed] = []
        self.decoder_feeds: list[Feed] = []

    def encode(self, images: np.ndarray) -> EncoderOutput:
        self.encoder_feeds.append({"image": np.ascontiguousarray(images, dtype=np.float32)})
        return super().encode(images)

    def step(self, tokens: np.ndarray, past_kv: np.ndarray,
             memory_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.decoder_feeds.append({"tokens": tokens.astype(np.int64), "past_kv": past_kv,
                                   "memory_kv": memory_kv})
        return super().step(tokens, past_kv, memory_kv)


def phantom_feeds(model_dir: Path, count: int, step_stride: int = 4) -> CalibrationFeeds:
    """Encoder and decoder-step inputs of ``count`` training phantoms, as serving feeds them
    (one study at a time, through ``ReportGenerator``: the prompt of a prompted model, and
    the findings guard's steps when it acts).

    Every ``step_stride``-th decoder step of a study is kept, its first (the empty cache)
    included, so short and long caches are both seen.
    """
    info = ModelInfo.load(model_dir / "model.json")
    runtime = _RecordingModel(*model_files(model_dir))
    generator = ReportGenerator(model_dir, runtime=runtime)
    decoder_feeds: list[Feed] = []
    for seed in split_seeds("train", count):
        image = to_model_input(render_case(seed).image, info.image_size)[0]
        runtime.decoder_feeds.clear()
        generator.generate_prepared(image[None, None].astype(np.float32))
        decoder_feeds += runtime.decoder_feeds[::step_stride]
    return CalibrationFeeds(runtime.encoder_feeds, decoder_feeds)


def tensor_ranges(graph: Path, feeds: list[Feed],
                  method: CalibrationMethod = CalibrationMethod.MinMax) -> TensorsData:
    """Activation ranges of every tensor of ``graph`` over ``feeds``."""
    with tempfile.TemporaryDirectory() as scratch:
        calibrator = create_calibrator(graph, augmented_model_path=Path(scratch) / "aug.onnx",
                                       calibrate_method=method)
        calibrator.collect_data(_Feeds(feeds))
        return calibrator.compute_data()


def amax(ranges: TensorsData) -> dict[str, float]:
    """max |activation| per tensor name."""
    result = {}
    for name in ranges:
        low, high = ranges[name].range_value  # scalars, or arrays for empty tensors
        result[name] = float(max(np.abs(np.asarray(low)).max(initial=0.0),
                                 np.abs(np.asarray(high)).max(initial=0.0)))
    return result


def trt_cache_text(amax_by_tensor: dict[str, float]) -> str:
    lines = [TRT_CACHE_HEADER]
    for name in sorted(amax_by_tensor):
        scale = max(amax_by_tensor[name], 1e-8) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def calibrate(model_dir: Path, out: Path, count: int = 32) -> dict[str, Path]:
    """Write both tables for each graph under ``out/<graph>/``; returns those folders."""
    feeds = phantom_feeds(model_dir, count)
    encoder, decoder = model_files(model_dir)
    folders = {}
    for name, graph, graph_feeds in (("encoder", encoder, feeds.encoder),
                                     ("decoder_step", decoder, feeds.decoder_step)):
        ranges = tensor_ranges(graph, graph_feeds)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        write_calibration_table(ranges, str(folder))
        (folder / "calibration.cache").write_text(trt_cache_text(amax(ranges)))
        folders[name] = folder
    return folders

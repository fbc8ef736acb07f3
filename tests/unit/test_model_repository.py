"""model_repository/ checked offline: every config parses against Triton's own protobuf
schema (tritonclient ships model_config.proto compiled), and the report model's I/O matches
the shipped ONNX graphs it runs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo, model_files

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CONFIGS = sorted(REPOSITORY.glob("*/config.pbtxt"))


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_config_parses_and_names_its_folder(path: Path) -> None:
    config = parse(path)
    assert config.name == path.parent.name
    assert any(child.is_dir() and child.name.isdigit() for child in path.parent.iterdir())


def test_a_typo_in_a_config_is_caught() -> None:
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse('name: "x"\nmax_batch_sise: 4\n', model_config_pb2.ModelConfig())


def test_report_model_io_matches_the_shipped_onnx_graphs() -> None:
    config = parse(REPOSITORY / "radreport_report" / "config.pbtxt")
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    encoder = onnx.load(str(model_files(DEFAULT_MODEL_DIR)[0]))
    image = next(i for i in encoder.graph.input if i.name == "image")
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim][1:]  # without batch
    (image_input,) = config.input
    assert image_input.name == "image"
    assert image_input.data_type == model_config_pb2.TYPE_FP32
    assert list(image_input.dims) == dims == [1, info.image_size, info.image_size]
    outputs = {o.name: o for o in config.output}
    assert list(outputs["label_probs"].dims) == [len(info.labels)]
    assert outputs["report_json"].data_type == model_config_pb2.TYPE_STRING
    assert config.max_batch_size >= 16
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0

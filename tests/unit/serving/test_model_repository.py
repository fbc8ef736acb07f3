"""Triton configs checked offline: every config parses against Triton's own protobuf schema
(tritonclient ships model_config.proto compiled), the GPU target's TensorRT models match the
ONNX graphs their engines are built from, and the CPU report model matches the shipped model."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo, model_files
from radreport.serving.backend_config import execution_providers
from radreport.serving.repository import (
    DEFAULT_REPOSITORY,
    TARGETS,
    check_target,
    io_problems,
    layout,
    parse_config,
    profile_problems,
    report_io_problems,
    same_io,
)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_config_of_the_target_checks_clean(target: str) -> None:
    assert check_target(target, DEFAULT_MODEL_DIR) == []


def test_gpu_target_is_tensorrt_on_the_gpu() -> None:
    configs = {p.parent.name: parse_config(p) for p in TARGETS["gpu"].glob("*/config.pbtxt")}
    assert set(configs) == {"encoder", "decoder_step", "radreport_report",
                            "radreport_report_stream"}
    for config in configs.values():
        kinds = [group.kind for group in config.instance_group]
        assert kinds == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert configs["encoder"].platform == configs["decoder_step"].platform == "tensorrt_plan"
    # the whole-report model: same I/O as on the CPU, its loop on TensorRT through ONNX Runtime
    report = configs["radreport_report"]
    assert report.max_batch_size == 4  # the engines' optimization profiles: batch 1-4
    params = {k: v.string_value for k, v in report.parameters.items()}
    providers = execution_providers(params)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = providers[0][1]
    assert trt_options["trt_fp16_enable"] == "True"
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    size = info.image_size
    assert f"image:4x1x{size}x{size}" in trt_options["trt_profile_max_shapes"]
    assert "tokens:4x176" in trt_options["trt_profile_max_shapes"]  # the prompt, BOS, report


def test_gpu_report_model_keeps_the_cpu_interface() -> None:
    gpu = parse_config(TARGETS["gpu"] / "radreport_report" / "config.pbtxt")
    cpu = parse_config(DEFAULT_REPOSITORY / "radreport_report" / "config.pbtxt")
    assert same_io(gpu, cpu) == []
    for target in TARGETS.values():  # the streaming model: decoupled, its final response
        stream = parse_config(target / "radreport_report_stream" / "config.pbtxt")
        assert stream.model_transaction_policy.decoupled
        assert [o.name for o in stream.output] == ["sentence_json", "report_json", "label_probs"]
        assert list(stream.output)[1:] == list(parse_config(
            target / "radreport_report" / "config.pbtxt").output)
    gpu.output[1].dims[0] = 13
    assert same_io(gpu, cpu) == ["radreport_report: inputs/outputs differ from the CPU target's"]


def test_no_providers_means_onnx_runtime_on_the_cpu() -> None:
    assert execution_providers({}) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_layout_writes_a_repository_for_the_target(target: str, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    configs = layout(target, out)
    names = {c.parent.name for c in configs}
    assert names == {"encoder", "decoder_step", "radreport_report", "radreport_report_bls",
                     "radreport_report_stream"}
    for model in ("encoder", "decoder_step"):
        engine_slot = list((out / model / "1").iterdir())
        if target == "gpu":  # left for model.plan, built on the GPU
            assert engine_slot == []
            assert parse_config(out / model / "config.pbtxt").platform == "tensorrt_plan"
        else:
            assert [p.name for p in engine_slot] == ["model.py"]
    report = parse_config(out / "radreport_report" / "config.pbtxt")
    expected = TARGETS[target] / "radreport_report" / "config.pbtxt"
    assert report == parse_config(expected)
    assert (out / "radreport_report" / "1" / "model.py").is_file()
    with pytest.raises(FileExistsError):
        layout(target, out)


def test_a_typo_in_a_config_is_caught() -> None:
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse('name: "x"\nmax_batch_sise: 4\n', model_config_pb2.ModelConfig())


def test_a_config_that_disagrees_with_its_onnx_graph_is_reported(tmp_path: Path) -> None:
    config = parse_config(TARGETS["gpu"] / "decoder_step" / "config.pbtxt")
    config.output[0].dims[2] = 179  # logits over a vocabulary one word short
    config.input[0].data_type = model_config_pb2.TYPE_INT32
    config.input[1].name = "past_key_values"
    graph = onnx.load(str(model_files(DEFAULT_MODEL_DIR)[1]))
    problems = io_problems(config, graph)
    assert any("inputs" in p and "past_key_values" in p for p in problems)
    assert any("logits: dims [-1, -1, 179]" in p for p in problems)
    config.input[1].name = "past_kv"
    assert any("tokens: data type TYPE_INT32" in p for p in io_problems(config, graph))


def test_report_model_io_matches_the_shipped_onnx_graphs() -> None:
    config = parse_config(TARGETS["cpu"] / "radreport_report" / "config.pbtxt")
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    encoder = onnx.load(str(model_files(DEFAULT_MODEL_DIR)[0]))
    image = next(i for i in encoder.graph.input if i.name == "image")
    dims = [d.dim_value for d in image.type.tensor_type.shape.dim][1:]  # without batch
    image_input, context_input = config.input
    assert image_input.name == "image" and not image_input.optional
    assert image_input.data_type == model_config_pb2.TYPE_FP32
    assert list(image_input.dims) == dims == [1, info.image_size, info.image_size]
    outputs = {o.name: o for o in config.output}
    assert list(outputs["label_probs"].dims) == [len(info.labels)]
    assert outputs["report_json"].data_type == model_config_pb2.TYPE_STRING
    assert config.max_batch_size >= 16
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert context_input.name == "context_json"


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("model", ["radreport_report", "radreport_report_stream"])
def test_report_models_take_an_optional_clinical_context(target: str, model: str) -> None:
    config = parse_config(TARGETS[target] / model / "config.pbtxt")
    inputs = {i.name: i for i in config.input}
    assert set(inputs) == {"image", "context_json"}
    context = inputs["context_json"]
    assert context.optional  # DICOM pushes and v1 clients send none
    assert context.data_type == model_config_pb2.TYPE_STRING and list(context.dims) == [1]


def test_bls_report_model_takes_the_clinical_context_too() -> None:
    config = parse_config(TARGETS["cpu"] / "radreport_report_bls" / "config.pbtxt")
    assert [(i.name, i.optional) for i in config.input] == [("image", False),
                                                            ("context_json", True)]


def test_encoder_configs_serve_every_output_of_the_graph() -> None:
    graph = onnx.load(str(model_files(DEFAULT_MODEL_DIR)[0]))
    size = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json").image_size
    for target in TARGETS.values():
        config = parse_config(target / "encoder" / "config.pbtxt")
        assert [o.name for o in config.output] == [o.name for o in graph.graph.output]
        dims = {o.name: list(o.dims) for o in config.output}
        assert dims["query_maps"] == [-1, 20, (size // 16) ** 2]  # the patch grid
        # 20 queries and 3 device kinds at stride 4
        assert dims["fine_query_maps"] == [-1, 23, (size // 4) ** 2]


def test_a_report_model_of_another_input_size_is_reported() -> None:
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    config = parse_config(TARGETS["cpu"] / "radreport_report_stream" / "config.pbtxt")
    assert report_io_problems(config, info) == []
    config.input[0].dims[1:] = [256, 256]  # the input size of model v1
    assert report_io_problems(config, info) == [
        f"radreport_report_stream.image: dims [1, 256, 256] do not match the model's "
        f"[1, {info.image_size}, {info.image_size}]"]


def test_tensorrt_profiles_that_do_not_fit_the_graphs_are_reported() -> None:
    encoder, decoder = (onnx.load(str(p)) for p in model_files(DEFAULT_MODEL_DIR))
    config = parse_config(TARGETS["gpu"] / "radreport_report" / "config.pbtxt")
    assert profile_problems(config, encoder, decoder) == []
    providers = config.parameters["execution_providers"]
    providers.string_value = (providers.string_value.replace("x1025x", "x256x")
                              .replace("tokens:4x176", "tokens:4x144"))
    problems = profile_problems(config, encoder, decoder)
    assert any("memory_kv [3, 2, 1, 4, 256, 32] does not match" in p for p in problems)
    assert any("tokens [4, 144] cannot hold a decode of 176 positions" in p for p in problems)


def test_engine_build_script_profiles_fit_the_shipped_model() -> None:
    """deploy/triton/build_trt_engines.sh names the sizes trtexec's profiles use."""
    script = (TARGETS["gpu"].parent / "build_trt_engines.sh").read_text()
    sizes = dict(re.findall(r"\b(size|memory|len_max)=(\d+)", script))
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    decoder = onnx.load(str(model_files(DEFAULT_MODEL_DIR)[1]))
    meta = {p.key: p.value for p in decoder.metadata_props}
    memory = next(i for i in decoder.graph.input if i.name == "memory_kv")
    assert sizes == {"size": str(info.image_size), "len_max": meta["max_len"],
                     "memory": str(memory.type.tensor_type.shape.dim[4].dim_value)}

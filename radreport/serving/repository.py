"""Offline checks of Triton model configurations, for targets we cannot run here.

Every ``config.pbtxt`` is parsed with Triton's own model-config protobuf schema (compiled in
tritonclient), and a TensorRT model's inputs and outputs are compared with the ONNX graph its
engine is built from: names, data types and every fixed dimension. The report models' image
input and label output must fit the model folder (``model.json``), and the TensorRT
optimization profiles of the GPU report models must fit its graphs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from radreport.model.report import ModelInfo, model_files
from radreport.serving.backend_config import execution_providers
from radreport.serving.tritonserver import DEFAULT_REPOSITORY, PROJECT_ROOT

TARGETS = {"cpu": DEFAULT_REPOSITORY, "gpu": PROJECT_ROOT / "deploy" / "triton" / "gpu"}
# ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
                  onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
                  onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64,
                  onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32}


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def io_problems(config: model_config_pb2.ModelConfig, graph: onnx.ModelProto) -> list[str]:
    """Differences between a config's tensors and the ONNX graph's; empty when they agree."""
    problems: list[str] = []
    batch = [-1] if config.max_batch_size > 0 else []  # implicit batch axis, not in dims
    for kind, declared, actual in (("input", config.input, graph.graph.input),
                                   ("output", config.output, graph.graph.output)):
        onnx_tensors = {t.name: t for t in actual}
        if {t.name for t in declared} != set(onnx_tensors):
            problems.append(f"{config.name}: {kind}s {sorted(t.name for t in declared)} != "
                            f"ONNX {sorted(onnx_tensors)}")
            continue
        for tensor in declared:
            onnx_type = onnx_tensors[tensor.name].type.tensor_type
            if ONNX_TO_TRITON.get(onnx_type.elem_type) != tensor.data_type:
                problems.append(f"{config.name}.{tensor.name}: data type "
                                f"{model_config_pb2.DataType.Name(tensor.data_type)} does not "
                                f"match ONNX element type {onnx_type.elem_type}")
            onnx_dims = [d.dim_value if d.HasField("dim_value") else -1
                         for d in onnx_type.shape.dim]
            dims = batch + list(tensor.dims)
            if len(dims) != len(onnx_dims) or any(
                    o != -1 and d != o for d, o in zip(dims, onnx_dims, strict=False)):
                problems.append(f"{config.name}.{tensor.name}: dims {dims} do not match "
                                f"ONNX {onnx_dims}")
    return problems


def report_io_problems(config: model_config_pb2.ModelConfig, info: ModelInfo) -> list[str]:
    """A report model's ``image`` input and ``label_probs`` output against the model folder:
    one letterboxed square of the model's input size, one probability per label."""
    problems: list[str] = []
    size = info.image_size
    for tensor, expected in ((next((t for t in config.input if t.name == "image"), None),
                              [1, size, size]),
                             (next((t for t in config.output if t.name == "label_probs"), None),
                              [len(info.labels)])):
        if tensor is not None and list(tensor.dims) != expected:
            problems.append(f"{config.name}.{tensor.name}: dims {list(tensor.dims)} do not "
                            f"match the model's {expected}")
    return problems


def _graph_inputs(graph: onnx.ModelProto) -> dict[str, list[int]]:
    """Each input's dims, -1 where the graph leaves one free."""
    return {t.name: [d.dim_value if d.HasField("dim_value") else -1
                     for d in t.type.tensor_type.shape.dim] for t in graph.graph.input}


def profile_problems(config: model_config_pb2.ModelConfig, encoder: onnx.ModelProto,
                     decoder: onnx.ModelProto) -> list[str]:
    """The TensorRT execution provider's optimization profiles of a report model against
    the graphs: every named input exists with its rank and fixed dims, and the largest
    profile holds a whole decode (``max_len`` positions: the prompt, BOS and the report)."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    if "execution_providers" not in params:
        return []
    graphs = {**_graph_inputs(encoder), **_graph_inputs(decoder)}
    max_len = int({p.key: p.value for p in decoder.metadata_props}.get("max_len", 0))
    problems: list[str] = []
    for provider in execution_providers(params):
        if isinstance(provider, str):
            continue
        for key, value in provider[1].items():
            if not (key.startswith("trt_profile_") and key.endswith("_shapes")):
                continue
            for entry in value.split(","):
                name, _, shape = entry.partition(":")
                dims = [int(d) for d in shape.split("x")]
                if name not in graphs:
                    problems.append(f"{config.name} {key}: no graph input {name!r}")
                    continue
                graph_dims = graphs[name]
                if len(dims) != len(graph_dims) or any(
                        g != -1 and d != g for d, g in zip(dims, graph_dims, strict=False)):
                    problems.append(f"{config.name} {key}: {name} {dims} does not match "
                                    f"ONNX {graph_dims}")
                elif key == "trt_profile_max_shapes" and max_len and (
                        (name == "tokens" and dims[1] < max_len - 1)
                        or (name == "past_kv" and dims[4] < max_len - 1)):
                    problems.append(f"{config.name} {key}: {name} {dims} cannot hold a "
                                    f"decode of {max_len} positions")
    return problems


def same_io(config: model_config_pb2.ModelConfig,
            reference: model_config_pb2.ModelConfig) -> list[str]:
    """A model's inputs and outputs against the CPU target's: clients see one interface."""
    def io(c: model_config_pb2.ModelConfig) -> list[tuple[str, int, tuple[int, ...], bool]]:
        return [(t.name, t.data_type, tuple(t.dims), getattr(t, "optional", False))
                for t in [*c.input, *c.output]]
    if io(config) != io(reference):
        return [f"{config.name}: inputs/outputs differ from the CPU target's"]
    return []


def layout(target: str, out: Path) -> list[Path]:
    """Write a model repository for a target: the CPU repository, GPU configs laid over it.

    On the GPU target the graph models' ``1/`` folders are left for the ``model.plan``
    engines that ``deploy/triton/build_trt_engines.sh`` builds on the serving GPU.
    """
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    shutil.copytree(DEFAULT_REPOSITORY, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if target == "gpu":
        for config in sorted(TARGETS["gpu"].glob("*/config.pbtxt")):
            model = out / config.parent.name
            if parse_config(config).platform == "tensorrt_plan":
                shutil.rmtree(model)
                (model / "1").mkdir(parents=True)
            shutil.copyfile(config, model / "config.pbtxt")
    return sorted(out.glob("*/config.pbtxt"))


def check_target(target: str, model_dir: Path) -> list[str]:
    """Problems of every config of a target; graph models checked against their ONNX."""
    problems: list[str] = []
    info = ModelInfo.load(model_dir / "model.json")
    encoder_path, decoder_path = model_files(model_dir)
    graphs = (onnx.load(str(encoder_path)), onnx.load(str(decoder_path)))
    for path in sorted(TARGETS[target].glob("*/config.pbtxt")):
        try:
            config = parse_config(path)
        except text_format.ParseError as err:
            problems.append(f"{path}: {err}")
            continue
        if config.name != path.parent.name:
            problems.append(f"{path}: name {config.name!r} is not its folder's")
        cpu_config = DEFAULT_REPOSITORY / config.name / "config.pbtxt"
        if config.backend == "python" and target != "cpu" and cpu_config.is_file():
            problems += same_io(config, parse_config(cpu_config))
        if config.max_batch_size > 0:  # the report models: one image per batch row
            problems += report_io_problems(config, info)
        problems += profile_problems(config, *graphs)
        graph = model_dir / f"{config.name}.onnx"
        if graph.is_file():  # an engine or a stand-in for one: must match its graph
            problems += io_problems(config, onnx.load(str(graph)))
        elif config.platform == "tensorrt_plan":
            problems.append(f"{path}: no ONNX graph {graph.name} to build its engine from")
    return problems

"""Offline checks of Triton model configurations, for targets we cannot run here.

Every ``config.pbtxt`` is parsed with Triton's own model-config protobuf schema (compiled in
tritonclient), and a TensorRT model's inputs and outputs are compared with the ONNX graph its
engine is built from: names, data types and every fixed dimension.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

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
        graph = model_dir / f"{config.name}.onnx"
        if graph.is_file():  # an engine or a stand-in for one: must match its graph
            problems += io_problems(config, onnx.load(str(graph)))
        elif config.platform == "tensorrt_plan":
            problems.append(f"{path}: no ONNX graph {graph.name} to build its engine from")
    return problems

"""A trainable PyTorch model back from an exported model folder's ONNX graphs.

Our model folders are what we ship and keep; checkpoints live in a training run's scratch
space and do not survive it. To fine-tune a shipped model (finish a schedule, adapt it to
new data) its weights are read back from ``encoder.onnx`` and ``decoder_step.onnx``:

- initializers the exporter kept by name (``model.<parameter>``) are copied as they are;
- the others are found by the node that consumes them, whose name is the module scope
  (``/encoder/blocks.0/q/MatMul``): a MatMul's weight is the Linear's, transposed; the
  decoder's cross-attention K/V projections run outside their module's scope in the
  encoder graph (``/kv``, ``/kv_1``, ...), in layer order; a tied LM head is checked
  against the token embedding;
- the exporter keeps one initializer for parameters of equal value (a fresh LayerNorm's
  ones) and names the others through Identity nodes, which are followed;
- a Conv carries its BatchNorm folded in (eval mode). The BatchNorm is rebuilt so that it
  computes exactly the identity plus the folded bias in eval mode, with running statistics
  measured on ``images`` so that training mode (batch statistics) stays close to it.

``recovered_parity`` re-exports the result and compares it with the folder's graphs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn
from torch.nn import functional as F

from radreport.model.config import ModelConfig
from radreport.model.model import RadReportModel
from radreport.model.report import MODEL_INFO_FILE, ModelInfo

KV_SCOPE = re.compile(r"^/kv(?:_(\d+))?/MatMul$")


def module_path(node_name: str) -> str:
    """``/encoder/cnn/net/net.3/body/body.0/body.0.0/Conv`` -> ``encoder.cnn.net.3.body.0.0``.

    The exporter names a scope by its attribute path, and a child of a Sequential repeats
    its parent's name (``net.3`` inside ``net``), so such a segment replaces its parent.
    """
    parts: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts)


def _initializers(path: Path) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    graph = onnx.load(str(path)).graph
    return graph, {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _batchnorm_of(conv: str) -> str:
    """The BatchNorm after a Conv: the next index in a Sequential (``net.0.0`` ->
    ``net.0.1``), or a ResNet backbone's ``convN`` -> ``bnN`` (backbones.py)."""
    head, _, index = conv.rpartition(".")
    if index.startswith("conv"):
        return f"{head}.bn{index[4:]}"
    return f"{head}.{int(index) + 1}"


def load_weights(folder: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The model config and a complete state dict read from a folder's FP32 graphs."""
    folder = Path(folder)
    config = ModelConfig.from_dict(ModelInfo.load(folder / MODEL_INFO_FILE).extra["model_config"])
    expected = RadReportModel(config).state_dict()
    state: dict[str, Tensor] = {}
    for file in ("encoder.onnx", "decoder_step.onnx"):
        graph, values = _initializers(folder / file)
        for name, value in values.items():
            if name.startswith("model.") and name[6:] in expected:
                state[name[6:]] = torch.from_numpy(value.copy())
        for node in graph.node:
            _from_node(node, values, config, state)
    if config.tie_weights and "decoder.tok_emb.weight" in state:
        state["decoder.lm_head.weight"] = state["decoder.tok_emb.weight"]
    state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state and not _is_buffer(k)]
    if missing:
        raise ValueError(f"{folder}: no weights found for {missing}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} in the graph, "
                             f"{tuple(expected[key].shape)} in the model")
    return config, state


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _from_node(node: onnx.NodeProto, values: dict[str, np.ndarray], config: ModelConfig,
               state: dict[str, Tensor]) -> None:
    if node.op_type == "Identity" and node.input[0] in values:
        values[node.output[0]] = values[node.input[0]]  # a deduplicated parameter
        if node.output[0].startswith("model."):
            state[node.output[0][6:]] = torch.from_numpy(values[node.input[0]].copy())
        return
    unnamed = [i for i in node.input if i in values and not i.startswith("model.")]
    if not unnamed or node.op_type not in ("Conv", "MatMul"):
        return
    kv = KV_SCOPE.match(node.name)
    path = (f"decoder.blocks.{int(kv.group(1) or 0)}.cross_attn.kv" if kv
            else module_path(node.name))
    weight = torch.from_numpy(values[unnamed[0]].copy())
    if node.op_type == "MatMul":
        _matmul_weight(path, weight, config, state)
        return
    state[f"{path}.weight"] = weight
    norm = _batchnorm_of(path)
    bias = torch.from_numpy(values[unnamed[1]].copy())
    state[f"{norm}.weight"] = torch.ones_like(bias)
    state[f"{norm}.bias"] = bias


def _matmul_weight(path: str, weight: Tensor, config: ModelConfig,
                   state: dict[str, Tensor]) -> None:
    if path == "decoder.lm_head" and config.tie_weights:
        if "decoder.tok_emb.weight" in state and not torch.allclose(
                state["decoder.tok_emb.weight"], weight.T):
            raise ValueError("the LM head is not tied to the token embedding")
        return
    in_proj = path.startswith("encoder.") and path.endswith("self_attn")
    state[f"{path}.{'in_proj_weight' if in_proj else 'weight'}"] = weight.T.contiguous()


def recover_model(folder: str | Path, images: Iterable[Tensor] = (),
                  image_size: int | None = None) -> RadReportModel:
    """The folder's model in PyTorch, its eval-mode function that of the graphs.

    ``images`` (batches of model inputs) measure each BatchNorm's input statistics, which
    then become its running statistics and scale (see the module docstring).
    ``image_size`` other than the folder's starts a run at another input size: the
    convolutions are size-free, and the patch grid's position embeddings are resized
    (bicubic, as ViTs are fine-tuned at a higher resolution).
    """
    config, state = load_weights(folder)
    if image_size is not None and image_size != config.image_size:
        if config.arch != "chexquery":
            raise ValueError("only a chexquery model starts at another input size")
        old_grid = config.image_size // config.patch
        config = replace(config, image_size=image_size)
        key = "encoder.cnn.pos_emb"
        state[key] = resize_positions(state[key], old_grid, image_size // config.patch)
    model = RadReportModel(config)
    model.load_state_dict(state, strict=False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:  # identity: (x - 0) / sqrt((1 - eps) + eps) * 1 + bias
        assert norm.running_mean is not None and norm.running_var is not None
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
    model.eval()
    _measure_batchnorm(model, norms, images)
    return model


def resize_positions(positions: Tensor, old_grid: int, new_grid: int) -> Tensor:
    """(1, old_grid**2, C) row-major patch position embeddings -> (1, new_grid**2, C)."""
    width = positions.shape[-1]
    grid = positions.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic",
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, width)


def _measure_batchnorm(model: RadReportModel, norms: list[nn.BatchNorm2d],
                       images: Iterable[Tensor]) -> None:
    sums: dict[int, list[Tensor]] = {id(n): [] for n in norms}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        x = inputs[0].detach().transpose(0, 1).flatten(1)  # (C, B*H*W)
        sums[id(module)].append(torch.stack([x.mean(1), (x * x).mean(1)]))

    handles = [n.register_forward_hook(hook) for n in norms]
    try:
        with torch.no_grad():
            for batch in images:
                model.encode(batch)
    finally:
        for handle in handles:
            handle.remove()
    for norm in norms:
        if not sums[id(norm)]:
            return  # nothing measured: keep the identity statistics
        mean, square = torch.stack(sums[id(norm)]).mean(0)
        var = (square - mean * mean).clamp_min(0.0)
        assert norm.running_mean is not None and norm.running_var is not None
        with torch.no_grad():  # eval: (x - mean) / sqrt(var + eps) * sqrt(var + eps) + mean + b
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.bias.add_(mean)
            norm.weight.copy_((var + norm.eps).sqrt())

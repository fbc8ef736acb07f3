"""Export the report model to two ONNX graphs that a serving loop can drive step by step.

``encoder.onnx`` runs once per image and also precomputes every decoder layer's
cross-attention keys/values, so a decoder step never recomputes them.
``decoder_step.onnx`` takes new tokens plus the self-attention cache and returns the next
logits and the grown cache in the same layout, so the caller feeds ``present_kv`` straight
back as ``past_kv`` (starting from a zero-length cache). Positions come from the cache
length, so there is no position input to keep in sync.

Graph I/O (L decoder layers, h heads, d head width, N patches, V vocabulary):

- encoder: ``image`` f32 (B, 1, H, W) -> ``memory_kv`` f32 (L, 2, B, h, M, d),
  ``label_probs`` f32 (B, n_labels) (sigmoid, before calibration), ``features`` f32
  (B, C) (the study's pooled feature vector, scored by the out-of-distribution gate).
  M = N patches, plus v2's fused global token in front. Patch features are not an
  output: the decoder only needs their K/V, and an output that also feeds other nodes
  breaks the FP16 converter's ``keep_io_types`` (``features`` is a copy for that reason).
  v2 graphs add ``query_maps`` f32 (B, Q, N): the 14 condition and 6 anatomy queries'
  attention over the patches (last query block, mean of heads), each row summing to 1;
  a sentence's grounding map is refined with the map of the finding or organ it names.
  Models with the fine grounding head (``fine_head``) add ``fine_query_maps`` f32
  (B, Q + D, (H/4)^2): the same queries' maps at stride 4, then one row per device kind
  (``labeler.DEVICE_KINDS``), each row summing to 1.
- decoder step: ``tokens`` i64 (B, T_new), ``past_kv`` f32 (L, 2, B, h, T_past, d),
  ``memory_kv`` -> ``logits`` f32 (B, T_new, V), ``present_kv`` f32
  (L, 2, B, h, T_past + T_new, d), ``cross_attn`` f32 (B, T_new, N) (mean over heads and
  grounding layers, over the patches only)

A v2 decoder starts from a prompt (``prompt_len`` ids, then BOS), recorded in the metadata.

The TorchScript exporter (``dynamo=False``) is used: torch.export specialises dimensions
of size 0 and 1 by default, which are exactly the empty first cache and the one-token
step. The ``max_len`` guard is evaluated only at trace time, so the graph does not check
it (an over-long position fails in a Gather); ``OnnxReportModel`` caps the length from
the ``max_len`` stored in the graph metadata along with bos/eos/pad ids.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from radreport.model.model import KV, RadReportModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["memory_kv", "label_probs", "features"]
QUERY_MAPS = "query_maps"  # v2 encoders only
FINE_QUERY_MAPS = "fine_query_maps"  # v2 encoders with the fine grounding head
DECODER_INPUTS = ["tokens", "past_kv", "memory_kv"]
DECODER_OUTPUTS = ["logits", "present_kv", "cross_attn"]
MIN_OPSET = 17


class EncoderGraph(nn.Module):
    """Image -> stacked cross-attention K/V and label probabilities."""

    def __init__(self, model: RadReportModel) -> None:
        super().__init__()
        self.model = model
        # The exporter puts a module back in the mode it found it in, children included: a
        # new wrapper is in training mode, so it would leave the model there and the next
        # forward would update BatchNorm statistics with example images.
        self.train(model.training)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        feats = self.model.encode(image)
        memory_kv = stack_kv(self.model.memory_kv(feats.memory))
        outputs: tuple[Tensor, ...] = (memory_kv, torch.sigmoid(feats.label_logits),
                                       feats.pooled * 1.0)
        if feats.query_attn is None:
            return outputs
        outputs = (*outputs, feats.query_attn * 1.0)
        if feats.fine_query_attn is None:
            return outputs
        return (*outputs, feats.fine_query_attn)


def encoder_outputs(model: RadReportModel) -> list[str]:
    """The encoder graph's output names: v2 (query) models add ``query_maps``, and those
    with the fine head ``fine_query_maps``."""
    cfg = model.config
    return (ENCODER_OUTPUTS + ([QUERY_MAPS] if cfg.arch == "chexquery" else [])
            + ([FINE_QUERY_MAPS] if cfg.fine_head else []))


class DecoderStepGraph(nn.Module):
    """One decoder call over stacked caches; positions continue after ``T_past``."""

    def __init__(self, model: RadReportModel) -> None:
        super().__init__()
        self.model = model
        # The exporter puts a module back in the mode it found it in, children included: a
        # new wrapper is in training mode, so it would leave the model there and the next
        # forward would update BatchNorm statistics with example images.
        self.train(model.training)

    def forward(self, tokens: Tensor, past_kv: Tensor,
                memory_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        step = self.model.decode(tokens, unstack_kv(memory_kv), unstack_kv(past_kv))
        return step.logits, stack_kv(step.cache), step.cross_attn


def stack_kv(kv: list[KV]) -> Tensor:
    """Per-layer (keys, values) -> one (L, 2, B, h, S, d) tensor."""
    return torch.stack([torch.stack(pair) for pair in kv])


def unstack_kv(kv: Tensor) -> list[KV]:
    """(L, 2, B, h, S, d) -> per-layer (keys, values)."""
    return [(layer[0], layer[1]) for layer in kv.unbind(0)]


def export_onnx(model: RadReportModel, out_dir: str | Path,
                opset: int = MIN_OPSET) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` and ``decoder_step.onnx`` (checked) and return their paths."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        enc = _export_encoder(model, out / ENCODER_FILE, opset)
        dec = _export_decoder(model, out / DECODER_FILE, opset)
    finally:
        model.train(was_training)
    return enc, dec


def _example_image(model: RadReportModel, batch: int) -> Tensor:
    cfg = model.config
    return torch.rand(batch, cfg.in_chans, cfg.image_size, cfg.image_size)


def _export_encoder(model: RadReportModel, path: Path, opset: int) -> Path:
    axes = {"image": {0: "batch"}, "memory_kv": {2: "batch"}, "label_probs": {0: "batch"},
            "features": {0: "batch"}, QUERY_MAPS: {0: "batch"}, FINE_QUERY_MAPS: {0: "batch"}}
    outputs = encoder_outputs(model)
    _export(EncoderGraph(model), (_example_image(model, 2),), path, opset,
            ENCODER_INPUTS, outputs, {k: v for k, v in axes.items() if k in [*outputs, "image"]})
    _finish(path, model)
    return path


def _export_decoder(model: RadReportModel, path: Path, opset: int) -> Path:
    """Traced with a non-empty cache and two new tokens so no length is baked in."""
    cfg = model.config
    batch, t_past, t_new = 2, 3, 2
    head_dim = cfg.dec_width // cfg.dec_heads
    with torch.no_grad():
        memory_kv = EncoderGraph(model)(_example_image(model, batch))[0]
    past = torch.randn(cfg.dec_depth, 2, batch, cfg.dec_heads, t_past, head_dim)
    tokens = torch.randint(0, cfg.vocab_size, (batch, t_new))
    axes = {"tokens": {0: "batch", 1: "new_tokens"}, "past_kv": {2: "batch", 4: "past_len"},
            "memory_kv": {2: "batch"}, "logits": {0: "batch", 1: "new_tokens"},
            "present_kv": {2: "batch", 4: "total_len"},
            "cross_attn": {0: "batch", 1: "new_tokens"}}
    _export(DecoderStepGraph(model), (tokens, past, memory_kv), path, opset,
            DECODER_INPUTS, DECODER_OUTPUTS, axes)
    _finish(path, model)
    return path


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, opset: int,
            inputs: list[str], outputs: list[str], axes: dict[str, dict[int, str]]) -> None:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (v2's query self-attention) is one fused
    # op ONNX does not have; the plain path computes the same thing in exportable ops.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings about the max_len guard and shape asserts are expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _finish(path: Path, model: RadReportModel) -> None:
    """Record the decoding constants in the graph so the runtime needs no checkpoint."""
    proto = onnx.load(str(path))
    cfg = model.config
    meta = {"bos_id": cfg.bos_id, "eos_id": cfg.eos_id, "pad_id": cfg.pad_id,
            "max_len": cfg.max_len, "n_patches": cfg.n_patches, "grid": cfg.grid,
            "prompt_len": cfg.prompt_len}
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def add_query_maps_output(src: str | Path, dst: str | Path | None = None) -> Path:
    """Expose ``query_maps`` on a v2 encoder graph exported before it was an output.

    The last query block's softmax (B, heads, Q, N) is in every such graph, feeding the
    queries' read-out; its mean over heads is what ``EncoderGraph`` now returns. Graphs
    that already have the output are written unchanged.
    """
    proto = onnx.load(str(src))
    graph = proto.graph
    if QUERY_MAPS not in {o.name for o in graph.output}:
        softmaxes = [n for n in graph.node if n.op_type == "Softmax"
                     and n.name.startswith("/encoder/blocks.") and "self_attn" not in n.name]
        if not softmaxes:
            raise ValueError(f"{src} has no query attention (not a v2 encoder)")
        last = max(softmaxes, key=lambda n: int(n.name.split(".")[1].split("/")[0]))
        graph.node.append(onnx.helper.make_node(
            "ReduceMean", [last.output[0]], [QUERY_MAPS], axes=[1], keepdims=0,
            name="/query_maps/ReduceMean"))
        graph.output.append(onnx.helper.make_tensor_value_info(
            QUERY_MAPS, onnx.TensorProto.FLOAT, ["batch", None, None]))
        onnx.checker.check_model(proto, full_check=True)
    out = Path(dst or src)
    onnx.save(proto, str(out))
    return out


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic INT8 quantization of the MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return Path(dst)


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute, float32 at the graph boundary so callers do not change.

    Nodes that compute from shapes only (an attention scale ``d ** -0.5`` traced from a
    tensor's size) stay float32: converted, their Cast nodes disagree with the types the
    graph declares and ONNX Runtime refuses to load it (v2's query blocks did).
    """
    from onnxconverter_common import float16

    proto = onnx.load(str(src))
    with warnings.catch_warnings():  # weights below fp16's range are clipped: expected
        warnings.simplefilter("ignore")
        proto = float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=shape_only_nodes(proto.graph))
    onnx.save(proto, str(dst))
    return Path(dst)


def shape_only_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes computing from tensor shapes (``Shape`` and what follows from it
    alone), in topological order; nodes that touch the inputs' values are not among them."""
    data = {i.name for i in graph.input}
    shaped: set[str] = set()
    names: list[str] = []
    for node in graph.node:
        if node.op_type == "Shape":
            shaped.update(node.output)
            names.append(node.name)
        elif any(i in data for i in node.input):
            data.update(node.output)
        elif any(i in shaped for i in node.input):
            shaped.update(node.output)
            names.append(node.name)
    return names


def write_model_folder(checkpoint: dict[str, Any], tokenizer_path: str | Path,
                       out_dir: str | Path, name: str, version: str, opset: int = MIN_OPSET,
                       variants: Sequence[str] = ()) -> list[Path]:
    """A complete model folder (graphs, variants, tokenizer, ``model.json``) from a checkpoint.

    ``model.json`` also records where the weights came from (epoch, step, validation loss,
    the resolved training config), so a served report can be traced to its training run.
    """
    from radreport.model.report import MODEL_INFO_FILE, TOKENIZER_FILE, ModelInfo

    out = Path(out_dir)
    model = RadReportModel.from_checkpoint(checkpoint).eval()
    paths = list(export_onnx(model, out, opset=opset))
    converters = {"int8": quantize_int8, "fp16": convert_fp16}
    for variant in variants:
        convert = converters[variant]
        paths += [convert(p, p.with_name(f"{p.stem}.{variant}.onnx")) for p in paths[:2]]
    shutil.copyfile(tokenizer_path, out / TOKENIZER_FILE)
    provenance: dict[str, Any] = {
        key: checkpoint[key] for key in ("epoch", "step", "best_val", "train_config")
        if key in checkpoint}
    info = ModelInfo(name, version, model.config.image_size,
                     extra={"model_config": model.config.to_dict(),
                            "parameters": model.num_params(), **provenance})
    info.save(out / MODEL_INFO_FILE)
    return [*paths, out / TOKENIZER_FILE, out / MODEL_INFO_FILE]

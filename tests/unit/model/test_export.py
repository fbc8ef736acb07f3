from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny import tiny_config

from radreport.model.decode import greedy_decode
from radreport.model.export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    convert_fp16,
    export_onnx,
    quantize_int8,
    stack_kv,
    unstack_kv,
)
from radreport.model.model import RadReportModel
from radreport.model.onnx_runtime import OnnxReportModel

ATOL = 1e-4


def _targets(cfg_eos: int, vocab: int) -> torch.Tensor:
    """Three reports of different lengths, so rows finish at different steps."""
    gen = torch.Generator().manual_seed(1)
    rows = [[*torch.randint(3, vocab, (4 + 3 * i,), generator=gen).tolist(), cfg_eos]
            for i in range(3)]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


@pytest.fixture(scope="module")
def trained() -> tuple[RadReportModel, torch.Tensor]:
    """A tiny model overfit to map three images to three reports: non-trivial greedy text."""
    torch.manual_seed(0)
    model = RadReportModel(tiny_config())
    images = torch.rand(3, 1, 64, 64)
    ids = _targets(model.config.eos_id, model.config.vocab_size)
    tokens = torch.cat([torch.full((3, 1), model.config.bos_id), ids[:, :-1]], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        loss = model(images, tokens, targets=ids).loss
        assert loss is not None
        loss.backward()
        opt.step()
    return model.eval(), images


@pytest.fixture(scope="module")
def exported(trained: tuple[RadReportModel, torch.Tensor],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return export_onnx(trained[0], tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def runtime(exported: tuple[Path, Path]) -> OnnxReportModel:
    return OnnxReportModel(*exported)


def test_graphs_have_documented_io_and_opset(exported: tuple[Path, Path]) -> None:
    for path, inputs, outputs in ((exported[0], ENCODER_INPUTS, ENCODER_OUTPUTS),
                                  (exported[1], DECODER_INPUTS, DECODER_OUTPUTS)):
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        assert opset >= 17
        assert [i.name for i in proto.graph.input] == inputs
        assert [o.name for o in proto.graph.output] == outputs


@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_matches_pytorch(trained: tuple[RadReportModel, torch.Tensor],
                                 runtime: OnnxReportModel, batch: int) -> None:
    model = trained[0]
    images = torch.rand(batch, 1, 64, 64)
    out = runtime.encode(images.numpy())
    with torch.no_grad():
        feats = model.encode(images)
        memory_kv = stack_kv(model.memory_kv(feats.memory)).numpy()
    assert out.memory_kv.shape == (2, 2, batch, 2, 64, 16)
    np.testing.assert_allclose(out.memory_kv, memory_kv, atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.label_probs, torch.sigmoid(feats.label_logits).numpy(),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize(("batch", "past", "new"), [(1, 0, 1), (3, 0, 4), (3, 7, 1), (2, 5, 3)])
def test_decoder_step_matches_pytorch(trained: tuple[RadReportModel, torch.Tensor],
                                      runtime: OnnxReportModel, batch: int, past: int,
                                      new: int) -> None:
    model = trained[0]
    memory_kv = runtime.encode(torch.rand(batch, 1, 64, 64).numpy()).memory_kv
    past_kv = torch.randn(2, 2, batch, 2, past, 16)
    tokens = torch.randint(0, model.config.vocab_size, (batch, new))
    logits, present, attn = runtime.step(tokens.numpy(), past_kv.numpy(), memory_kv)
    with torch.no_grad():
        ref = model.decode(tokens, unstack_kv(torch.from_numpy(memory_kv)), unstack_kv(past_kv))
    assert logits.shape == (batch, new, model.config.vocab_size)
    assert present.shape == (2, 2, batch, 2, past + new, 16) and attn.shape == (batch, new, 64)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(present, stack_kv(ref.cache).numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(attn, ref.cross_attn.numpy(), atol=ATOL, rtol=0)


def test_onnx_greedy_matches_pytorch(trained: tuple[RadReportModel, torch.Tensor],
                                     runtime: OnnxReportModel) -> None:
    model, images = trained
    tokens, maps = runtime.greedy(images.numpy())
    ref = greedy_decode(model, images)
    eos = model.config.eos_id
    assert all(eos in row for row in tokens.tolist())  # rows end, at different steps
    assert len({row.index(eos) for row in tokens.tolist()}) == 3
    np.testing.assert_array_equal(tokens, ref.tokens.numpy())
    np.testing.assert_allclose(maps, ref.cross_attn.numpy(), atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # FP16 range truncation notices
@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_reduced_precision_variants_run(trained: tuple[RadReportModel, torch.Tensor],
                                        exported: tuple[Path, Path], runtime: OnnxReportModel,
                                        tmp_path: Path, variant: str) -> None:
    convert = quantize_int8 if variant == "int8" else convert_fp16
    paths = [convert(src, tmp_path / src.name) for src in exported]
    images = trained[1].numpy()
    tokens, maps = OnnxReportModel(*paths).greedy(images)
    reference, _ = runtime.greedy(images)
    assert tokens.dtype == np.int64 and maps.shape == (*tokens.shape, 64)
    assert tokens.min() >= 0 and tokens.max() < trained[0].config.vocab_size
    width = min(tokens.shape[1], reference.shape[1])
    agreement = float((tokens[:, :width] == reference[:, :width]).mean())
    print(f"{variant}: token agreement with FP32 {agreement:.3f}")

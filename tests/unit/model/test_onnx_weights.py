"""A trainable model read back from a model folder's ONNX graphs, and runs started from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from radreport.model.config import ModelConfig
from radreport.model.export import DecoderStepGraph, EncoderGraph, write_model_folder
from radreport.model.model import RadReportModel
from radreport.model.onnx_weights import (
    load_weights,
    module_path,
    recover_model,
    resize_positions,
)
from radreport.model.prompt import PROMPT_LEN
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import load_config, train

TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"
V2_MODEL = """[model]
arch = "chexquery"
image_size = 64
patch = 16
conv_channels = [4, 8, 8, 16, 16]
enc_width = 16
enc_heads = 2
query_layers = 1
dec_depth = 2
dec_width = 16
dec_heads = 2
prompt_len = 28
max_len = 178
"""


def v2_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, arch="chexquery", image_size=64, patch=16,
                       conv_channels=(4, 8, 8, 16, 16), enc_width=16, enc_heads=2,
                       query_layers=1, dec_depth=2, dec_width=16, dec_heads=2,
                       prompt_len=PROMPT_LEN, max_len=PROMPT_LEN + 150)


def test_module_paths_follow_the_exporters_scopes() -> None:
    assert module_path("/encoder/cnn/net/net.3/body/body.0/body.0.0/Conv") == (
        "encoder.cnn.net.3.body.0.0")
    assert module_path("/encoder/cnn/net/net.5/skip/skip.0/Conv") == "encoder.cnn.net.5.skip.0"
    assert module_path("/encoder/blocks.1/self_attn/MatMul") == "encoder.blocks.1.self_attn"
    assert module_path("/decoder/blocks.0/mlp/fc/MatMul") == "decoder.blocks.0.mlp.fc"


@pytest.fixture()
def trained_folder(tokenizer: ReportTokenizer, tmp_path: Path) -> tuple[RadReportModel, Path]:
    """A v2 model with BatchNorm statistics and affines far from their defaults, exported."""
    torch.manual_seed(3)
    model = RadReportModel(v2_config(tokenizer.vocab_size))
    generator = torch.Generator().manual_seed(4)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator))
    model.eval()
    tokenizer.save(tmp_path / "tokenizer.json")
    write_model_folder(model.checkpoint(), tmp_path / "tokenizer.json", tmp_path / "m", "v", "0")
    return model, tmp_path / "m"


def test_recovered_model_computes_what_the_graphs_compute(
        trained_folder: tuple[RadReportModel, Path]) -> None:
    original, folder = trained_folder
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    recovered = recover_model(folder, [images])
    assert recovered.config == original.config
    with torch.no_grad():
        expected = EncoderGraph(original)(images)
        got = EncoderGraph(recovered)(images)
        for name, a, b in zip(["memory_kv", "label_probs", "features", "query_maps"],
                              expected, got, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=name)
        tokens = torch.randint(4, 50, (3, 5), generator=torch.Generator().manual_seed(6))
        past = torch.zeros(2, 2, 3, 2, 0, 8)
        for a, b in zip(DecoderStepGraph(original)(tokens, past, expected[0]),
                        DecoderStepGraph(recovered)(tokens, past, expected[0]), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        # training mode normalises with batch statistics, which were measured: close
        recovered.train()
        batch_stats = recovered.encode(images).label_logits
        recovered.eval()
        torch.testing.assert_close(batch_stats, recovered.encode(images).label_logits,
                                   atol=1e-4, rtol=0)


def test_a_folder_missing_weights_is_refused(trained_folder: tuple[RadReportModel, Path],
                                             tmp_path: Path) -> None:
    _, folder = trained_folder
    (folder / "decoder_step.onnx").unlink()
    with pytest.raises(FileNotFoundError):
        load_weights(folder)


def test_a_run_starts_from_a_model_folder(trained_folder: tuple[RadReportModel, Path],
                                          tmp_path: Path) -> None:
    """``train.init_from``: the folder's tokenizer and weights; at lr 0 the run's model is
    the folder's (its BatchNorm statistics recomputed from the same training images)."""
    _, folder = trained_folder
    config_file = tmp_path / "v2.toml"
    tiny = TINY.read_text()
    config_file.write_text(V2_MODEL + tiny[tiny.index("[data]"):])
    config = load_config(config_file, ["train.lr=0.0", "train.warmup_steps=0",
                                       f"train.init_from=\"{folder}\""])
    run = tmp_path / "run"
    train(config, run, progress=False)
    assert (run / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    model = RadReportModel.from_checkpoint(torch.load(run / "last.pt", weights_only=True))
    image = np.random.default_rng(7).random((2, 1, 64, 64), dtype=np.float32)
    served = ort.InferenceSession(str(folder / "encoder.onnx")).run(["label_probs"],
                                                                     {"image": image})[0]
    with torch.no_grad():
        probs = torch.sigmoid(model.eval().encode(torch.from_numpy(image)).label_logits)
    np.testing.assert_allclose(probs.numpy(), served, atol=0.02)


def test_a_run_can_start_at_a_larger_input_size(
        trained_folder: tuple[RadReportModel, Path]) -> None:
    """64 px (a 4 x 4 grid) read back at 96 px (6 x 6): the convolutions carry over, the
    position embeddings are resized smoothly, and the model runs at the new size."""
    original, folder = trained_folder
    images = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(6))
    grown = recover_model(folder, [images], image_size=96)
    assert grown.config.image_size == 96 and grown.config.n_patches == 36
    old = original.encoder.cnn.pos_emb.detach()  # type: ignore[union-attr]
    new = grown.encoder.cnn.pos_emb.detach()  # type: ignore[union-attr]
    assert new.shape == (1, 36, old.shape[-1])
    corners = new.reshape(6, 6, -1)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.allclose(corners.mean(0), old.reshape(4, 4, -1)[[0, 0, -1, -1], [0, -1, 0, -1]]
                          .mean(0), atol=0.5 * float(old.abs().max()))
    same = resize_positions(old, 4, 4)
    assert torch.allclose(same, old, atol=1e-6)
    native = recover_model(folder).state_dict()  # convolutions as read back (BN unfolded)
    for name, value in native.items():
        if name.startswith("encoder.cnn.net") and value.ndim == 4:  # the convolutions
            assert torch.equal(grown.state_dict()[name], value), name
    with torch.no_grad():
        assert EncoderGraph(grown)(images)[0].shape[0] == 2

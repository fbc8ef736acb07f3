"""Pretrained parts from local files: a backbone checkpoint loads, trains and exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_config

from radreport.model.backbones import FrozenBatchNorm2d, ResNetTrunk, backbone_of
from radreport.model.config import ModelConfig
from radreport.model.export import export_onnx, stack_kv, unstack_kv, write_model_folder
from radreport.model.model import RadReportModel
from radreport.model.onnx_runtime import OnnxReportModel
from radreport.model.onnx_weights import recover_model
from radreport.model.pretrained import load_pretrained, param_groups, prepare
from radreport.model.tokenizer import ReportTokenizer

ATOL = 1e-4


def backbone_config(checkpoint: Path | str = "", **overrides: Any) -> ModelConfig:
    """chexquery at 64 px (a 4 x 4 grid) on a ResNet-18 trunk, decoder width 32."""
    params: dict[str, Any] = dict(arch="chexquery", patch=16, backbone="torchvision:resnet18",
                                  backbone_checkpoint=str(checkpoint), projector="mlp2",
                                  query_layers=1)
    params.update(overrides)
    return tiny_config(**params)


def resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole ResNet-18 as torchvision saves it: RGB stem, layer4 and classifier too."""
    torch.manual_seed(seed)
    trunk = ResNetTrunk("resnet18", 3, 0.0, 1.0)
    for module in trunk.modules():  # non-trivial statistics, so loading them shows
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.randn(512, 256, 3, 3)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.zeros(1000)
    return state


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = resnet18_state()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


def _batch(cfg: ModelConfig, n: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, cfg.vocab_size, (n, 6), generator=gen)
    return {"images": torch.rand(n, 1, cfg.image_size, cfg.image_size, generator=gen),
            "tokens": torch.cat([torch.full((n, 1), cfg.bos_id), ids[:, :-1]], dim=1),
            "targets": ids, "label_targets": torch.randint(0, 2, (n, cfg.n_labels)).float()}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_backbone_loads_the_saved_weights(saved: tuple[Path, dict[str, torch.Tensor]],
                                          tmp_path: Path, fmt: str) -> None:
    path, state = saved
    if fmt == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = load_pretrained(RadReportModel(backbone_config(path)))
    trunk = backbone_of(model)
    assert isinstance(trunk, ResNetTrunk) and trunk.out_channels == 256
    own = trunk.state_dict()
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer3.1.conv2.weight", "layer2.0.downsample.1.running_var", "bn1.bias"):
        torch.testing.assert_close(own[key], state[key], rtol=0, atol=0)
    assert not any(k.startswith(("layer4", "fc")) for k in own)


def test_checkpoint_missing_weights_is_an_error(tmp_path: Path) -> None:
    state = resnet18_state()
    del state["layer3.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layer3\.1\.bn2\.weight"):
        load_pretrained(RadReportModel(backbone_config(path)))


def test_config_checks_pretrained_keys() -> None:
    with pytest.raises(ValueError, match="chexquery"):
        tiny_config(backbone="timm:resnet18")
    with pytest.raises(ValueError, match="timm:NAME"):
        backbone_config(backbone="resnet18")
    with pytest.raises(ValueError, match="projector"):
        tiny_config(projector="mlp3")
    with pytest.raises(ValueError, match="torchvision names"):
        RadReportModel(backbone_config(backbone="torchvision:vgg16"))


def test_frozen_backbone_trains_around_it(saved: tuple[Path, dict[str, torch.Tensor]]) -> None:
    torch.manual_seed(0)
    model = prepare(load_pretrained(RadReportModel(backbone_config(saved[0]))), True)
    trunk = backbone_of(model)
    assert trunk is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in trunk.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups(model, 1e-3, 0.1)
    assert [g["name"] for g in groups] == ["new"]  # nothing of the trunk is optimised
    opt = torch.optim.AdamW(groups)
    model.train()
    for _ in range(2):
        out = model(**_batch(model.config))
        assert out.loss is not None and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = model.state_dict()
    for key, value in before.items():
        same = torch.equal(after[key], value)
        assert same == key.startswith("encoder.cnn.net."), key
    # The same keys as an unfrozen model: the checkpoint rebuilds without the switch.
    RadReportModel(model.config).load_state_dict(after)


def test_backbone_learning_rate_is_the_ratio(
        saved: tuple[Path, dict[str, torch.Tensor]]) -> None:
    model = load_pretrained(RadReportModel(backbone_config(saved[0])))
    groups = param_groups(model, 2e-3, 0.05)
    assert [(g["name"], g["lr"]) for g in groups] == [("new", 2e-3), ("backbone", 1e-4)]
    trunk = backbone_of(model)
    assert trunk is not None
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in trunk.parameters()}
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups)
    loss = model(**_batch(model.config)).loss
    assert loss is not None
    loss.backward()
    opt.step()  # the scheduler's factor multiplies each group's own lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 5e-5])
    del sched


def test_backbone_model_exports_with_parity(saved: tuple[Path, dict[str, torch.Tensor]],
                                            tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = load_pretrained(RadReportModel(backbone_config(saved[0]))).eval()
    runtime = OnnxReportModel(*export_onnx(model, tmp_path))
    images = torch.rand(2, 1, 64, 64)
    out = runtime.encode(images.numpy())
    with torch.no_grad():
        feats = model.encode(images)
        memory_kv = model.memory_kv(feats.memory)
    np.testing.assert_allclose(out.memory_kv, stack_kv(memory_kv).numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.label_probs, torch.sigmoid(feats.label_logits).numpy(),
                               atol=ATOL, rtol=0)
    tokens = torch.tensor([[model.config.bos_id, 5, 7], [model.config.bos_id, 9, 4]])
    logits, _, attn = runtime.step(tokens.numpy(), runtime.empty_past(2), out.memory_kv)
    with torch.no_grad():
        ref = model.decode(tokens, unstack_kv(torch.from_numpy(out.memory_kv)))
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(attn, ref.cross_attn.numpy(), atol=ATOL, rtol=0)


def test_default_model_is_unchanged() -> None:
    """The shipped defaults: the residual CNN and a single Linear projection."""
    model = RadReportModel(tiny_config(arch="chexquery", patch=16))
    assert backbone_of(model) is None and isinstance(model.proj, torch.nn.Linear)
    assert "proj.weight" in model.state_dict()


def test_export_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """Exporting used to leave the model in training mode, and tracing the decoder then
    moved its BatchNorm statistics with the random example images."""
    model = RadReportModel(backbone_config()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path)
    assert not model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []


def test_backbone_model_folder_recovers_for_fine_tuning(
        saved: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """train.init_from reads a model folder back (onnx_weights.py): a ResNet trunk's
    BatchNorms are found after ``convN`` as ``bnN``, the mlp2 projector by its scope."""
    tokenizer = ReportTokenizer.train(["No acute process.", "Small left effusion."])
    tokenizer.save(tmp_path / "tokenizer.json")
    torch.manual_seed(4)
    cfg = backbone_config(saved[0], vocab_size=tokenizer.vocab_size)
    model = load_pretrained(RadReportModel(cfg)).eval()
    write_model_folder(model.checkpoint(), tmp_path / "tokenizer.json", tmp_path / "folder",
                       "pretrained-test", "0")
    recovered = recover_model(tmp_path / "folder", [torch.rand(4, 1, 64, 64)]).eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want, got = model.encode(images), recovered.encode(images)
    torch.testing.assert_close(got.memory, want.memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.label_logits, want.label_logits, atol=1e-5, rtol=0)

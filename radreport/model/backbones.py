"""Standard image backbones, from local checkpoint files, as the v2 encoder's trunk.

A hospital's ML team starts from an ImageNet or chest X-ray pretrained network saved as a
file (nothing is downloaded here). ``model.backbone`` names it as timm or torchvision do:

- the ResNet family (``resnet18/34/50/101/152``, under either source) is built here, with
  torchvision's module names, which timm's ResNets share: a checkpoint from either loads
  into it, and a model folder trained with it loads on a machine without timm. The trunk
  stops after ``layer3``, at stride 16, the patch grid the queries and decoder read;
- any other ``timm:NAME`` is ``timm.create_model(NAME, features_only=True)`` cut at the
  stride-16 feature map, its weights read by timm from the local file (needs timm, and
  so torchvision: neither imports with this machine's CPU build of torch, so this path
  is not run here).

A grayscale radiograph feeds the first convolution, whose RGB weights are summed (timm's
``adapt_input_conv``): the same as feeding the image to all three channels. Inputs are
normalised with ``backbone_mean``/``backbone_std`` inside the trunk, so the ONNX graph
carries it. ``freeze_backbone`` turns its BatchNorms into ``FrozenBatchNorm2d``, which
keeps the pretrained statistics through training and BatchNorm re-estimation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radreport.model.config import ModelConfig

TRUNK = "encoder.cnn.net"  # the backbone's parameter prefix in RadReportModel
STRIDE = 16
BLOCK_WIDTHS = (64, 128, 256)  # planes of layer1..layer3


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class Bottleneck(nn.Module):
    """ResNet v1.5 (torchvision's and timm's): the stride is on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.downsample(x))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6)),
    "resnet50": (Bottleneck, (3, 4, 6)), "resnet101": (Bottleneck, (3, 4, 23)),
    "resnet152": (Bottleneck, (3, 8, 36)),
}  # blocks in layer1..layer3; layer4 (stride 32) and the classifier are not built


class ResNetTrunk(nn.Module):
    """(B, in_chans, H, W) -> (B, C, H/16, W/16): a ResNet's stem and layer1..layer3."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, name: str, in_chans: int, mean: float, std: float) -> None:
        super().__init__()
        block, depths = RESNETS[name]
        self.mean, self.std = mean, std
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, depth) in enumerate(zip(BLOCK_WIDTHS, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # /4
        return self.layer3(self.layer2(self.layer1(x)))  # /16


class TimmTrunk(nn.Module):
    """Any timm model's stride-16 feature map (``features_only``); needs timm installed."""

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        super().__init__()
        import timm  # optional: only users of timm-only architectures need it

        probe: Any = timm.create_model(name, pretrained=False, features_only=True,
                                       in_chans=cfg.in_chans)
        reductions = list(probe.feature_info.reduction())
        if STRIDE not in reductions:
            raise ValueError(f"timm:{name} has no stride-16 feature map: {reductions}")
        self.kwargs: dict[str, Any] = {
            "model_name": name, "features_only": True, "in_chans": cfg.in_chans,
            "out_indices": (reductions.index(STRIDE),)}
        self.mean, self.std = cfg.backbone_mean, cfg.backbone_std
        self.body = timm.create_model(pretrained=False, **self.kwargs)
        info: Any = self.body.feature_info
        self.out_channels = int(info.channels()[-1])

    def load(self, path: str | Path) -> None:
        """timm reads the file (its key remapping, first-conv adaptation), then we copy."""
        import timm

        twin = timm.create_model(pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 **self.kwargs)
        self.body.load_state_dict(twin.state_dict())

    def forward(self, images: Tensor) -> Tensor:
        out: Tensor = self.body((images - self.mean) / self.std)[-1]
        return out


def build_trunk(cfg: ModelConfig) -> ResNetTrunk | TimmTrunk:
    """The backbone ``cfg`` names, with random weights (``load_backbone`` fills them)."""
    source, _, name = cfg.backbone.partition(":")
    if name in RESNETS:
        return ResNetTrunk(name, cfg.in_chans, cfg.backbone_mean, cfg.backbone_std)
    if source == "timm":
        return TimmTrunk(name, cfg)
    raise ValueError(f"backbone {cfg.backbone!r}: torchvision names supported are "
                     f"{sorted(RESNETS)}; other architectures are read through timm")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or ``torch.save`` file (weights only, never pickled
    code), unwrapped from ``{"state_dict": ...}``/``{"model": ...}`` and DDP's ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    raw: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, Tensor)}


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first convolution's (O, 3, k, k) RGB weights for ``in_chans`` inputs: summed for
    one channel (gray fed to R, G and B alike), as timm does."""
    if weight.size(1) == in_chans:
        return weight
    if in_chans == 1 and weight.size(1) == 3:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"first convolution has {weight.size(1)} input channels, model wants "
                     f"{in_chans}")


def load_backbone(trunk: nn.Module, path: str | Path) -> None:
    """A native trunk's weights from a timm or torchvision checkpoint of the whole network;
    its later stages and classifier are dropped, anything the trunk lacks is an error."""
    if isinstance(trunk, TimmTrunk):
        trunk.load(path)
        return
    state = read_state_dict(path)
    own = trunk.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_input_conv(state["conv1.weight"], own["conv1.weight"].size(1))
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} backbone weights, e.g. {missing[:3]}")
    trunk.load_state_dict(state, strict=False)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms (eval-mode arithmetic always).

    Same state-dict keys as ``nn.BatchNorm2d``, so checkpoints load either way, and not a
    ``_BatchNorm``, so training's statistics re-estimation leaves it alone.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = norm.eps
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            value = getattr(norm, name)
            assert value is not None, name
            self.register_buffer(name, value.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def backbone_of(model: nn.Module) -> nn.Module | None:
    """The pretrained trunk inside a RadReportModel, or None for the built-in CNN."""
    trunk = model.get_submodule(TRUNK) if _has(model, TRUNK) else None
    return trunk if isinstance(trunk, ResNetTrunk | TimmTrunk) else None


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def freeze(trunk: nn.Module) -> None:
    """No gradients, and BatchNorm statistics fixed at the pretrained ones."""
    for name, child in list(trunk.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(trunk, name, FrozenBatchNorm2d(child))
        else:
            freeze(child)
    for p in trunk.parameters():
        p.requires_grad_(False)

"""Hyper-parameters of the grounded report model, saved verbatim in every checkpoint.

A checkpoint must rebuild its own model without guessing, so everything that changes a
tensor shape or the loss lives here, and ``to_dict``/``from_dict`` round-trip through JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from radreport.data.labels import CHEXPERT_LABELS

ARCHS: tuple[str, ...] = ("vit", "chexquery")
PROJECTORS: tuple[str, ...] = ("linear", "mlp2")
DECODERS: tuple[str, ...] = ("native", "hf")
DEC_ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh")
BACKBONE_SOURCES: tuple[str, ...] = ("timm", "torchvision")


@dataclass(frozen=True)
class ModelConfig:
    """Image encoder + cross-attending Transformer decoder + multi-label head.

    ``arch`` picks the encoder: ``"vit"`` (v1: a plain ViT, CLS token to the label head) or
    ``"chexquery"`` (v2: a residual CNN to a patch grid at stride ``patch``, then learned
    condition and anatomy queries that cross-attend to the patches; see ``chexquery.py``).
    ``prompt_len`` > 0 makes the decoder read a prompt of that many tokens before BOS
    (the head's findings and the optional clinical context, see ``prompt.py``).

    ``backbone`` (chexquery only) swaps the residual CNN for a standard network named as
    timm or torchvision name it, truncated at stride 16 (``backbones.py``); its weights are
    read from the local file ``backbone_checkpoint`` when a run starts, never downloaded.
    ``projector`` maps encoder features to the decoder's width: one Linear, or seed 001's
    Linear-GELU-Linear (``"mlp2"``). ``decoder = "hf"`` starts the decoder from the
    GPT-2-style model in the local Hugging Face folder ``decoder_path`` (``hf_decoder.py``).
    """

    vocab_size: int
    arch: str = "vit"
    image_size: int = 256
    patch: int = 16
    in_chans: int = 1
    enc_depth: int = 4
    enc_width: int = 192
    enc_heads: int = 3
    dec_depth: int = 3
    dec_width: int = 192
    dec_heads: int = 3
    mlp_ratio: int = 4
    max_len: int = 160
    n_labels: int = len(CHEXPERT_LABELS)
    dropout: float = 0.0
    tie_weights: bool = True
    # Decoder layers whose cross-attention is averaged into the grounding map; None = all.
    grounding_layers: tuple[int, ...] | None = None
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    lambda_ground: float = 0.1
    lambda_entropy: float = 0.01
    lambda_label: float = 0.5
    # v2 (arch = "chexquery") only:
    conv_channels: tuple[int, ...] = (16, 32, 64, 128, 160)  # stem, /4, /8, /16 stages
    query_layers: int = 2
    n_anatomy_queries: int = 6
    lambda_query: float = 0.5  # condition/anatomy query attention vs their region masks
    prompt_len: int = 0
    # The fine grounding head (fine_head.py): query and device maps at stride 4; the
    # built-in CNN only, trained on the frozen model (``fine_grounding.py``).
    fine_head: bool = False
    # Pretrained parts (backbones.py, hf_decoder.py); the defaults are the shipped model's.
    backbone: str = ""  # "" = the residual CNN above; "timm:resnet50", "torchvision:resnet18"
    backbone_checkpoint: str = ""  # local .pth/.pt/.safetensors read when a run starts
    backbone_mean: float = 0.449  # input normalisation of the backbone: ImageNet's mean and
    backbone_std: float = 0.226  # std averaged over RGB, as its first conv sums RGB weights
    projector: str = "linear"  # encoder -> decoder width: "linear" | "mlp2" (seed 001)
    decoder: str = "native"  # "hf": decoder weights from the GPT-2 folder decoder_path
    decoder_path: str = ""  # local Hugging Face folder (config.json, model.safetensors)
    dec_activation: str = "gelu"  # decoder MLP: "gelu" | "gelu_tanh" (GPT-2's gelu_new)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} must be one of {ARCHS}")
        object.__setattr__(self, "conv_channels", tuple(self.conv_channels))
        if self.arch == "chexquery" and (self.patch != 16 or len(self.conv_channels) != 5):
            raise ValueError("arch 'chexquery' has stride 16 (patch = 16) and five "
                             f"conv_channels, got patch {self.patch}, {self.conv_channels}")
        self._check_pretrained()
        if self.fine_head and (self.arch != "chexquery" or self.backbone):
            raise ValueError("fine_head reads the built-in v2 CNN's stride-4 map: it needs "
                             "arch 'chexquery' and no backbone")
        if self.image_size % self.patch:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {self.patch}"
            )
        for name, width, heads in (("enc", self.enc_width, self.enc_heads),
                                   ("dec", self.dec_width, self.dec_heads)):
            if width % heads:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")
        if self.grounding_layers is not None:
            # JSON gives lists; a frozen dataclass must hold a hashable tuple.
            object.__setattr__(self, "grounding_layers", tuple(self.grounding_layers))
            bad = [i for i in self.grounding_layers if not 0 <= i < self.dec_depth]
            if bad or not self.grounding_layers:
                raise ValueError(
                    f"grounding_layers {self.grounding_layers} must be a non-empty subset of "
                    f"range(dec_depth={self.dec_depth})"
                )

    def _check_pretrained(self) -> None:
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector {self.projector!r} must be one of {PROJECTORS}")
        if self.decoder not in DECODERS or self.dec_activation not in DEC_ACTIVATIONS:
            raise ValueError(f"decoder {self.decoder!r} / dec_activation {self.dec_activation!r}"
                             f" must be one of {DECODERS} / {DEC_ACTIVATIONS}")
        if (self.decoder == "hf") != bool(self.decoder_path):
            raise ValueError("decoder = 'hf' and decoder_path go together")
        if self.decoder == "hf" and not self.tie_weights:
            raise ValueError("decoder = 'hf' ties the LM head to the token embedding, as GPT-2")
        if self.backbone_checkpoint and not self.backbone:
            raise ValueError("backbone_checkpoint is set but backbone is not")
        if not self.backbone:
            return
        source, _, name = self.backbone.partition(":")
        if source not in BACKBONE_SOURCES or not name:
            raise ValueError(f"backbone {self.backbone!r} must be 'timm:NAME' or "
                             "'torchvision:NAME'")
        if self.arch != "chexquery":
            raise ValueError(f"backbone needs arch 'chexquery', got {self.arch!r}")
        if self.backbone_std <= 0:
            raise ValueError(f"backbone_std {self.backbone_std} must be positive")

    @property
    def memory_prefix(self) -> int:
        """Memory tokens before the patches (v2: the fused global token); never in maps."""
        return 1 if self.arch == "chexquery" else 0

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    @property
    def grounding_layer_indices(self) -> tuple[int, ...]:
        if self.grounding_layers is None:
            return tuple(range(self.dec_depth))
        return self.grounding_layers

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["conv_channels"] = list(self.conv_channels)
        if self.grounding_layers is not None:
            data["grounding_layers"] = list(self.grounding_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config; unknown keys are an error so a stale checkpoint fails loudly."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**data)

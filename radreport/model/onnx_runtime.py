"""Greedy report decoding over the exported ONNX graphs, with numpy and ONNX Runtime only.

This is the reference the serving backend (a Triton Python model) runs: no torch import,
the encoder once per batch, then one decoder step per token with ``present_kv`` fed back
as ``past_kv``. It reproduces ``radreport.model.decode.greedy_decode`` token for token:
rows that have emitted EOS keep stepping (the batch stays rectangular) but get PAD and a
zero attention map, and the loop stops when every row has finished.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from radreport.model.prompt import PROMPT_TOKENS

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
# A v2 tokenizer puts the prompt's tokens right after PAD, BOS, EOS and UNK.
PROMPT_IDS = slice(4, 4 + len(PROMPT_TOKENS))


@dataclass
class EncoderOutput:
    memory_kv: np.ndarray  # (L, 2, B, h, M, d) float32
    label_probs: np.ndarray  # (B, n_labels) float32
    features: np.ndarray | None = None  # (B, C) float32; None for graphs before v2
    query_maps: np.ndarray | None = None  # (B, Q, N) float32, v2: condition/anatomy maps
    fine_query_maps: np.ndarray | None = None  # (B, Q + D, (S/4)^2) float32: the fine head's

    @property
    def grounding_maps(self) -> np.ndarray | None:
        """The maps sentences ground on: the fine head's where the graph has them."""
        return self.query_maps if self.fine_query_maps is None else self.fine_query_maps


@dataclass
class GreedyStep:
    tokens: np.ndarray  # (B,) int64: the token each row chose (PAD once finished)
    attention: np.ndarray  # (B, N) float32: its cross-attention over the image patches
    finished: np.ndarray  # (B,) bool: rows that have emitted EOS, this step included


class OnnxReportModel:
    """The two exported graphs plus the decoding constants stored in their metadata."""

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path,
                 providers: Sequence[str | tuple[str, dict[str, str]]] = DEFAULT_PROVIDERS,
                 options: ort.SessionOptions | None = None) -> None:
        self.encoder = ort.InferenceSession(str(encoder_path), sess_options=options,
                                            providers=list(providers))
        self.decoder = ort.InferenceSession(str(decoder_path), sess_options=options,
                                            providers=list(providers))
        meta = self.decoder.get_modelmeta().custom_metadata_map
        self.bos_id = int(meta.get("bos_id", 1))
        self.eos_id = int(meta.get("eos_id", 2))
        self.pad_id = int(meta.get("pad_id", 0))
        self.max_len = int(meta.get("max_len", 160))
        self.prompt_len = int(meta.get("prompt_len", 0))
        self._encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        self._past_shape = _past_kv_template(self.decoder)

    def encode(self, images: np.ndarray) -> EncoderOutput:
        """images (B, 1, H, W) float32."""
        outputs = dict(zip(self._encoder_outputs, self.encoder.run(
            None, {"image": np.ascontiguousarray(images, dtype=np.float32)}), strict=True))
        return EncoderOutput(outputs["memory_kv"], outputs["label_probs"],
                             outputs.get("features"), outputs.get("query_maps"),
                             outputs.get("fine_query_maps"))

    def step(self, tokens: np.ndarray, past_kv: np.ndarray,
             memory_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call -> logits (B, T, V), present_kv, cross_attn (B, T, N)."""
        logits, present_kv, cross_attn = self.decoder.run(
            None, {"tokens": tokens.astype(np.int64), "past_kv": past_kv,
                   "memory_kv": memory_kv})
        return logits, present_kv, cross_attn

    def empty_past(self, batch: int) -> np.ndarray:
        """The zero-length cache a decode starts from: (L, 2, B, h, 0, d)."""
        layers, heads, head_dim = self._past_shape
        return np.zeros((layers, 2, batch, heads, 0, head_dim), dtype=np.float32)

    def greedy(self, images: np.ndarray, bos_id: int | None = None, eos_id: int | None = None,
               max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (B, T) int64 (EOS kept, PAD after) and their maps (B, T, N).

        ``max_len`` caps generated tokens and is itself capped by the model's positions.
        """
        return self.greedy_from_memory(self.encode(images).memory_kv, bos_id, eos_id, max_len)

    def greedy_from_memory(self, memory_kv: np.ndarray, bos_id: int | None = None,
                           eos_id: int | None = None, max_len: int | None = None,
                           prompt: np.ndarray | None = None,
                           ) -> tuple[np.ndarray, np.ndarray]:
        """``greedy`` after the encoder, for callers that also want its label outputs."""
        tokens: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for step in self.greedy_steps(memory_kv, bos_id, eos_id, max_len, prompt):
            tokens.append(step.tokens)
            maps.append(step.attention)
        return np.stack(tokens, axis=1), np.stack(maps, axis=1).astype(np.float32)

    def greedy_steps(self, memory_kv: np.ndarray, bos_id: int | None = None,
                     eos_id: int | None = None, max_len: int | None = None,
                     prompt: np.ndarray | None = None) -> Iterator[GreedyStep]:
        """The greedy loop one step at a time, so callers can act on a report as it grows
        (streaming sentences); items already finished get PAD and a zero map.

        ``prompt`` (B, prompt_len) int64 comes before BOS for v2 graphs, which need one.
        """
        bos = self.bos_id if bos_id is None else bos_id
        eos = self.eos_id if eos_id is None else eos_id
        batch = memory_kv.shape[2]
        inputs = np.full((batch, 1), bos, dtype=np.int64)
        if self.prompt_len:
            if prompt is None or prompt.shape != (batch, self.prompt_len):
                raise ValueError(f"this decoder needs a prompt of shape ({batch}, "
                                 f"{self.prompt_len}), got "
                                 f"{None if prompt is None else prompt.shape}")
            inputs = np.concatenate([prompt.astype(np.int64), inputs], axis=1)
        room = self.max_len - self.prompt_len
        limit = room if max_len is None else min(max_len, room)
        past = self.empty_past(batch)
        finished = np.zeros(batch, dtype=bool)
        for _ in range(limit):
            logits, past, attn = self.step(inputs, past, memory_kv)
            last = logits[:, -1]
            if self.prompt_len:  # prompt tokens are inputs, never words of the report
                last[:, PROMPT_IDS] = -np.inf
            nxt = np.where(finished, self.pad_id, last.argmax(axis=-1)).astype(np.int64)
            attention = np.where(finished[:, None], np.float32(0.0), attn[:, -1])
            finished = finished | (nxt == eos)
            yield GreedyStep(nxt, attention, finished.copy())
            if finished.all():
                break
            inputs = nxt[:, None]


def _past_kv_template(session: ort.InferenceSession) -> tuple[int, int, int]:
    """(layers, heads, head_dim) from the decoder's declared ``past_kv`` shape."""
    shape = next(i.shape for i in session.get_inputs() if i.name == "past_kv")
    layers, heads, head_dim = shape[0], shape[3], shape[5]
    if not all(isinstance(v, int) for v in (layers, heads, head_dim)):
        raise ValueError(f"past_kv has no static layer/head sizes: {shape}")
    return int(layers), int(heads), int(head_dim)

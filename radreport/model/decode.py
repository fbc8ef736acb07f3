"""Turn an image into token ids, keeping the cross-attention map behind every token.

Greedy and beam search both run the image encoder and the cross-attention K/V once, then
feed one token per step through the decoder's self-attention KV cache. ``greedy_decode_
reference`` recomputes the whole prefix each step with no cache: it is slow on purpose, the
yardstick the cached paths are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from radreport.model.model import KV, DecoderStep, RadReportModel

StepFn = Callable[[Tensor], DecoderStep]  # prefix (B, T) -> output; last position is next


@dataclass
class Generation:
    tokens: Tensor  # (B, T) int64 generated ids (BOS excluded), EOS kept, PAD after it
    cross_attn: Tensor  # (B, T, N) the map each token was generated with; zeros on PAD
    label_logits: Tensor  # (B, n_labels)


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS last when it finished
    cross_attn: Tensor  # (T, N)
    logprob: float
    score: float  # logprob / length penalty


@torch.no_grad()
def greedy_decode(model: RadReportModel, images: Tensor,
                  max_new_tokens: int | None = None) -> Generation:
    """Batched greedy decoding with the KV cache; stops when every row has said EOS."""
    feats = model.encode(images)
    memory_kv = model.memory_kv(feats.memory)
    cache: list[KV] | None = None
    inputs = _bos(model, images.size(0), images.device)  # (B, 1)

    def step(inputs: Tensor) -> DecoderStep:
        nonlocal cache
        out = model.decode(inputs[:, -1:], memory_kv, cache)
        cache = out.cache
        return out

    return _greedy_loop(model, inputs, step, feats.label_logits, max_new_tokens)


@torch.no_grad()
def greedy_decode_reference(model: RadReportModel, images: Tensor,
                            max_new_tokens: int | None = None) -> Generation:
    """Greedy decoding that re-runs the full prefix every step (no cache)."""
    feats = model.encode(images)
    memory_kv = model.memory_kv(feats.memory)
    inputs = _bos(model, images.size(0), images.device)
    return _greedy_loop(model, inputs, lambda seq: model.decode(seq, memory_kv),
                        feats.label_logits, max_new_tokens)


def _greedy_loop(model: RadReportModel, inputs: Tensor, step: StepFn, label_logits: Tensor,
                 max_new_tokens: int | None) -> Generation:
    """``step(prefix)`` returns the decoder output whose last position predicts the next id."""
    cfg = model.config
    finished = torch.zeros(inputs.size(0), dtype=torch.bool, device=inputs.device)
    tokens: list[Tensor] = []
    maps: list[Tensor] = []
    for _ in range(_limit(model, max_new_tokens)):
        out = step(inputs)
        nxt = out.logits[:, -1].argmax(dim=-1)  # (B,)
        nxt = nxt.masked_fill(finished, cfg.pad_id)
        maps.append(out.cross_attn[:, -1].masked_fill(finished[:, None], 0.0))  # (B, N)
        tokens.append(nxt)
        finished = finished | (nxt == cfg.eos_id)
        if bool(finished.all()):
            break
        inputs = torch.cat([inputs, nxt[:, None]], dim=1)
    return Generation(torch.stack(tokens, dim=1), torch.stack(maps, dim=1), label_logits)


@torch.no_grad()
def beam_search(model: RadReportModel, image: Tensor, beam_size: int = 4,
                max_new_tokens: int | None = None, length_penalty: float = 0.6,
                no_repeat_ngram_size: int = 3) -> list[Hypothesis]:
    """Beam search for one image (1, C, H, W); hypotheses best first.

    Scores are sum log p / ((5 + len) / 6) ** length_penalty (Wu et al., 2016), so longer
    reports are not punished merely for having more words. A token that would repeat an
    n-gram already in the hypothesis is banned (0 disables). Search stops once
    ``beam_size`` hypotheses have ended with EOS, or at the length limit.
    """
    if image.size(0) != 1:
        raise ValueError(f"beam_search takes one image, got a batch of {image.size(0)}")
    cfg = model.config
    feats = model.encode(image)
    memory_kv = model.memory_kv(feats.memory)  # batch 1, expanded to the live beams
    live = [Hypothesis([], feats.memory.new_zeros(0, cfg.n_patches), 0.0, 0.0)]
    cache: list[KV] | None = None
    inputs = _bos(model, 1, image.device)
    finished: list[Hypothesis] = []
    for _ in range(_limit(model, max_new_tokens)):
        k = len(live)
        out = model.decode(inputs, [(mk.expand(k, -1, -1, -1), mv.expand(k, -1, -1, -1))
                                    for mk, mv in memory_kv], cache)
        logp = out.logits[:, -1].float().log_softmax(dim=-1)  # (K, V)
        ban_repeated_ngrams(logp, [h.tokens for h in live], no_repeat_ngram_size)
        scores = torch.tensor([h.logprob for h in live], device=logp.device)[:, None] + logp
        grown = _grow(live, scores, out.cross_attn[:, -1], beam_size, cfg.eos_id, length_penalty)
        finished += [h for _, h in grown if h.tokens[-1] == cfg.eos_id]
        survivors = [(parent, h) for parent, h in grown if h.tokens[-1] != cfg.eos_id]
        if len(finished) >= beam_size or not survivors:
            live = []
            break
        parents = torch.tensor([p for p, _ in survivors], device=logp.device)
        cache = [(ck[parents], cv[parents]) for ck, cv in out.cache]
        live = [h for _, h in survivors]
        inputs = torch.tensor([[h.tokens[-1]] for h in live], device=logp.device)
    return sorted(finished + live, key=lambda h: h.score, reverse=True)[:beam_size]


def _grow(live: Sequence[Hypothesis], scores: Tensor, maps: Tensor, beam_size: int,
          eos_id: int, alpha: float) -> list[tuple[int, Hypothesis]]:
    """The best extensions (parent index, hypothesis): up to ``beam_size`` non-EOS ones,
    plus any EOS endings ranked above them."""
    # scores (K, V) cumulative log-probs; maps (K, N) the map behind each parent's next token
    vocab = scores.size(1)
    top, flat = scores.flatten().topk(min(2 * beam_size, scores.numel()))
    grown: list[tuple[int, Hypothesis]] = []
    kept = 0
    for score, index in zip(top.tolist(), flat.tolist(), strict=True):
        if score == float("-inf") or kept == beam_size:
            break
        parent, token = divmod(index, vocab)
        tokens = [*live[parent].tokens, token]
        attn = torch.cat([live[parent].cross_attn, maps[parent : parent + 1]], dim=0)
        grown.append((parent, Hypothesis(tokens, attn, score, score / _lp(len(tokens), alpha))))
        kept += token != eos_id
    return grown


def _lp(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def ban_repeated_ngrams(logp: Tensor, histories: Sequence[Sequence[int]], n: int) -> None:
    """Set to -inf, in place, each next token that would complete an n-gram seen before."""
    if n <= 0:
        return
    for row, seq in enumerate(histories):
        if len(seq) < n - 1:
            continue
        prefix = tuple(seq[len(seq) - (n - 1):])
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1)
                  if tuple(seq[i : i + n - 1]) == prefix}
        if banned:
            logp[row, sorted(banned)] = float("-inf")


def _bos(model: RadReportModel, batch: int, device: torch.device) -> Tensor:
    return torch.full((batch, 1), model.config.bos_id, dtype=torch.long, device=device)


def _limit(model: RadReportModel, max_new_tokens: int | None) -> int:
    """BOS plus all but the last generated token must fit in ``max_len`` positions."""
    cap = model.config.max_len
    return cap if max_new_tokens is None else min(max_new_tokens, cap)

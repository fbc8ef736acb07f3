from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from radreport.model.decode import (
    Generation,
    ban_repeated_ngrams,
    beam_search,
    greedy_decode,
    greedy_decode_reference,
)
from radreport.model.model import KV, DecoderStep, RadReportModel


def _trigrams(tokens: list[int]) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def test_cached_greedy_matches_recomputing_the_prefix(tiny_model: RadReportModel) -> None:
    images = torch.rand(3, 1, 64, 64)
    cached = greedy_decode(tiny_model, images, max_new_tokens=24)
    reference = greedy_decode_reference(tiny_model, images, max_new_tokens=24)
    assert cached.tokens.shape == (3, 24) and cached.cross_attn.shape == (3, 24, 64)
    assert torch.equal(cached.tokens, reference.tokens)
    torch.testing.assert_close(cached.cross_attn, reference.cross_attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.cross_attn.sum(-1), torch.ones(3, 24))


def test_greedy_matches_teacher_forcing_on_its_own_output(tiny_model: RadReportModel) -> None:
    """The map stored for token t is the one the forward pass gives at position t."""
    images = torch.rand(1, 1, 64, 64)
    gen = greedy_decode(tiny_model, images, max_new_tokens=10)
    prefix = torch.cat([torch.ones(1, 1, dtype=torch.long), gen.tokens[:, :-1]], dim=1)
    out = tiny_model(images, prefix)
    assert torch.equal(out.logits.argmax(-1), gen.tokens)
    torch.testing.assert_close(out.cross_attn, gen.cross_attn, atol=1e-5, rtol=0)


@pytest.mark.parametrize("decode", [greedy_decode, greedy_decode_reference])
def test_greedy_pads_after_eos(tiny_model: RadReportModel, monkeypatch: pytest.MonkeyPatch,
                               decode: Callable[..., Generation]) -> None:
    eos = tiny_model.config.eos_id
    original = tiny_model.decode

    def eos_for_row_0_from_position_3(tokens: torch.Tensor, memory_kv: list[KV],
                                      cache: list[KV] | None = None) -> DecoderStep:
        step = original(tokens, memory_kv, cache)
        if tokens.size(1) + (0 if cache is None else cache[0][0].size(2)) >= 3:
            step.logits[0, -1, eos] = 1e4
        return step

    monkeypatch.setattr(tiny_model, "decode", eos_for_row_0_from_position_3)
    gen = decode(tiny_model, torch.rand(2, 1, 64, 64), max_new_tokens=6)
    assert gen.tokens.shape == (2, 6)
    assert gen.tokens[0, 2] == eos and gen.tokens[0, 3:].tolist() == [0, 0, 0]
    assert eos not in gen.tokens[0, :2].tolist() and eos not in gen.tokens[1].tolist()
    assert torch.all(gen.cross_attn[0, 3:] == 0) and torch.all(gen.cross_attn[1].sum(-1) > 0.99)


def test_beam_of_one_is_greedy(tiny_model: RadReportModel) -> None:
    image = torch.rand(1, 1, 64, 64)
    greedy = greedy_decode(tiny_model, image, max_new_tokens=20)
    (best,) = beam_search(tiny_model, image, beam_size=1, max_new_tokens=20,
                          no_repeat_ngram_size=0)
    assert best.tokens == greedy.tokens[0].tolist()
    torch.testing.assert_close(best.cross_attn, greedy.cross_attn[0], atol=1e-5, rtol=0)


def test_beam_search_never_repeats_a_trigram(tiny_model: RadReportModel) -> None:
    image = torch.rand(1, 1, 64, 64)
    unconstrained = greedy_decode(tiny_model, image, max_new_tokens=30).tokens[0].tolist()
    assert len(set(_trigrams(unconstrained))) < len(_trigrams(unconstrained))  # test has teeth
    hyps = beam_search(tiny_model, image, beam_size=4, max_new_tokens=30)
    assert len(hyps) == 4
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for hyp in hyps:
        assert len(set(_trigrams(hyp.tokens))) == len(_trigrams(hyp.tokens))
        assert hyp.cross_attn.shape == (len(hyp.tokens), 64)


def test_beam_search_finds_at_least_the_greedy_log_probability(
        tiny_model: RadReportModel) -> None:
    image = torch.rand(1, 1, 64, 64)
    greedy = beam_search(tiny_model, image, beam_size=1, max_new_tokens=12,
                         no_repeat_ngram_size=0)[0]
    wide = beam_search(tiny_model, image, beam_size=4, max_new_tokens=12,
                       no_repeat_ngram_size=0)
    assert max(h.logprob for h in wide) >= greedy.logprob - 1e-4


def test_beam_search_takes_one_image(tiny_model: RadReportModel) -> None:
    with pytest.raises(ValueError, match="one image, got a batch of 2"):
        beam_search(tiny_model, torch.rand(2, 1, 64, 64))


def test_ban_repeated_ngrams() -> None:
    logp = torch.zeros(2, 10)
    ban_repeated_ngrams(logp, [[5, 6, 7, 5, 6], [1, 2]], n=3)
    assert torch.isinf(logp[0, 7]) and torch.isinf(logp).sum() == 1

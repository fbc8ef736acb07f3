"""The findings guard: contradicting sentences are decoded again, omissions may not end."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radreport.model.guard import FindingsGuard, GuardedReport, guarded_decode
from radreport.model.tokenizer import ReportTokenizer


def test_contradictions_and_omissions_are_read_by_the_labeler() -> None:
    guard = FindingsGuard(frozenset({"Pleural Effusion", "Consolidation", "Lung Opacity"}))
    assert guard.contradicts("No pleural effusion.")
    assert guard.contradicts("There is a small left pneumothorax.")
    assert not guard.contradicts("Small left pleural effusion.")
    assert not guard.contradicts("No pneumothorax.")
    assert not guard.contradicts("The soft tissues are unremarkable.")
    assert guard.missing(["Small left pleural effusion."]) == {"Consolidation"}
    assert guard.missing(["Small left pleural effusion.",
                          "Focal consolidation is present in the lingula."]) == set()


def test_a_side_other_than_the_maps_read_is_a_contradiction() -> None:
    guard = FindingsGuard(frozenset({"Pleural Effusion", "Pneumothorax"}),
                          {"Pleural Effusion": "left"})
    assert guard.contradicts("Small right pleural effusion.")
    assert guard.contradicts("There are small bilateral pleural effusions.")
    assert not guard.contradicts("Small left pleural effusion.")
    assert not guard.contradicts("Moderate pleural effusion.")  # no side stated
    assert not guard.contradicts("There is a small right pneumothorax.")  # no side read


class ScriptedDecoder:
    """A decoder whose preferences are whole reports, best first; the KV cache carries the
    token history, so cutting the cache (as the guard does to go back) is honoured."""

    max_len = 64

    def __init__(self, tokenizer: ReportTokenizer, reports: Sequence[str], prompt_len: int):
        self.vocab = tokenizer.vocab_size
        self.start = prompt_len + 1
        self.reports = [[*tokenizer.encode_plain(r), tokenizer.eos_id] for r in reports]

    def empty_past(self, batch: int) -> np.ndarray:
        return np.zeros((1, 2, batch, 1, 0, 1), dtype=np.float32)

    def step(self, tokens: np.ndarray, past: np.ndarray,
             memory_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = np.concatenate([past[0, 0, 0, 0, :, 0], tokens[0].astype(np.float32)])
        present = np.zeros((1, 2, 1, 1, len(ids), 1), dtype=np.float32)
        present[0, 0, 0, 0, :, 0] = ids
        history = [int(i) for i in ids[self.start :]]
        logits = np.full((1, tokens.shape[1], self.vocab), -10.0, dtype=np.float32)
        for rank, report in enumerate(self.reports):
            if report[: len(history)] == history and len(report) > len(history):
                token = report[len(history)]
                logits[0, -1, token] = max(logits[0, -1, token], 100.0 - rank)
        return logits, present, np.full((1, tokens.shape[1], 4), 0.25, dtype=np.float32)


def decode(tokenizer: ReportTokenizer, present: set[str], reports: Sequence[str],
           sides: dict[str, str] | None = None) -> str:
    prompt = tokenizer.encode_prompt([False] * 14)
    runtime = ScriptedDecoder(tokenizer, reports, len(prompt))
    done = guarded_decode(runtime, tokenizer, np.zeros(1), prompt,  # type: ignore[arg-type]
                          FindingsGuard(frozenset(present), sides or {}),
                          GuardedReport([], []))
    assert len(done.attention) == len(done.ids)
    return tokenizer.decode(done.ids)


def test_a_denied_finding_is_decoded_again(tokenizer: ReportTokenizer) -> None:
    text = decode(tokenizer, {"Pleural Effusion"},
                  ["FINDINGS: No pleural effusion. Heart size is normal.",
                   "FINDINGS: Small left pleural effusion. Heart size is normal."])
    assert text == "FINDINGS: Small left pleural effusion. Heart size is normal."


def test_an_unstated_finding_may_not_end_the_report(tokenizer: ReportTokenizer) -> None:
    text = decode(tokenizer, {"Pneumothorax"},
                  ["FINDINGS: Heart size is normal.",
                   "FINDINGS: Heart size is normal. There is a small left pneumothorax."])
    assert text == "FINDINGS: Heart size is normal. There is a small left pneumothorax."


def test_extra_text_that_states_nothing_is_cut(tokenizer: ReportTokenizer) -> None:
    text = decode(tokenizer, {"Pneumothorax"},
                  ["FINDINGS: Heart size is normal.",
                   "FINDINGS: Heart size is normal. The soft tissues are unremarkable."])
    assert text == "FINDINGS: Heart size is normal."


def test_a_wrong_side_is_decoded_again_from_its_side_word(tokenizer: ReportTokenizer) -> None:
    """Only the side word (with its article, for a bilateral reading) is banned: the
    sentence keeps its other words, and its side follows the maps."""
    reports = ["FINDINGS: Atelectasis at the right lung base. Heart size is normal.",
               "FINDINGS: Atelectasis at the left lung base. Heart size is normal.",
               "FINDINGS: Atelectasis at both lung bases. Heart size is normal.",
               "FINDINGS: The soft tissues are unremarkable. Atelectasis at both lung bases."]
    text = decode(tokenizer, {"Atelectasis", "Lung Opacity"}, reports,
                  {"Atelectasis": "bilateral"})
    assert text == "FINDINGS: Atelectasis at both lung bases. Heart size is normal."
    text = decode(tokenizer, {"Atelectasis", "Lung Opacity"}, reports, {"Atelectasis": "left"})
    assert text == "FINDINGS: Atelectasis at the left lung base. Heart size is normal."
    assert decode(tokenizer, {"Atelectasis", "Lung Opacity"}, reports) == (
        "FINDINGS: Atelectasis at the right lung base. Heart size is normal.")

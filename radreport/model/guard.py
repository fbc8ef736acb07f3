"""The findings guard: the text states what the head decided, and nothing it ruled out.

The v2 decoder is prompted with the calibrated head's decisions and nearly always follows
them. Where it does not (its own reading of the image disagreeing with a sensitive
threshold), the guard makes it, by constrained greedy decoding of that one report:

- every finished sentence is read by the labeler the services use. A sentence that asserts
  a finding the head ruled out, or denies one it found, is decoded again with its first
  token banned, up to ``max_retries`` times per sentence (then it stays, and the services
  flag the disagreement for review);
- a sentence that puts a lateralised finding on another side than the queries' maps read
  (``FindingsGuard.sides``, only for labels where that read-out beat the text on
  validate) is decoded again with its side word banned at that position;
- a report may not end (EOS) while a finding the head found is unstated, up to
  ``max_eos_bans`` times; if what it writes instead states none of them, it is cut where
  it first tried to end.

Only reports that break a rule are decoded again, alone, from their last good sentence;
the batched loop serves the rest. NumPy and ONNX Runtime only, like the rest of serving.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from radreport.data.labels import NEGATIVE, with_parents
from radreport.eval.labeler import label_sentence
from radreport.model.grounding import report_spans
from radreport.model.onnx_runtime import PROMPT_IDS, OnnxReportModel
from radreport.model.query_grounding import SIDE_WORDS, side_of
from radreport.model.tokenizer import ReportTokenizer, detokenize

# Labels a report states through others: Lung Opacity through its children, and "No
# Finding" by stating nothing.
IMPLIED = frozenset({"No Finding", "Lung Opacity"})


@dataclass(frozen=True)
class FindingsGuard:
    present: frozenset[str]  # the head's decisions, closed under CheXpert's rules
    sides: Mapping[str, str] = field(default_factory=dict)  # label -> the maps' side

    def contradicts(self, text: str) -> bool:
        """Whether a sentence asserts an absent finding, denies a present one, or puts
        a finding on another side than the maps read."""
        return self.misstates_findings(text) or self.wrong_side(text)

    def misstates_findings(self, text: str) -> bool:
        """Whether a sentence asserts an absent finding or denies a present one."""
        for label, value in label_sentence(text).items():
            if label == "No Finding":
                continue
            if value == NEGATIVE and label in self.present:
                return True
            if value != NEGATIVE and label not in self.present:
                return True
        return False

    def wrong_side(self, text: str) -> bool:
        """A positive sentence about a finding with a read side that states another."""
        stated = side_of(text)
        if stated is None:
            return False
        return any(value != NEGATIVE and self.sides.get(label, stated) != stated
                   for label, value in label_sentence(text).items())

    def missing(self, texts: Iterable[str]) -> set[str]:
        """Present findings that none of ``texts`` states."""
        stated = with_parents({label for text in texts
                               for label, value in label_sentence(text).items()
                               if value != NEGATIVE})
        return set(self.present) - stated - IMPLIED


@dataclass
class GuardedReport:
    ids: list[int]  # generated ids, without EOS
    attention: list[np.ndarray]  # (N,) per id


def guarded_decode(runtime: OnnxReportModel, tokenizer: ReportTokenizer,
                   memory_kv: np.ndarray, prompt: Sequence[int], guard: FindingsGuard,
                   prefix: GuardedReport, max_retries: int = 3,
                   max_eos_bans: int = 3) -> GuardedReport:
    """Greedy decoding of one report (``memory_kv`` of batch 1) from an accepted prefix."""
    ids, attention = list(prefix.ids), list(prefix.attention)
    start = [*prompt, tokenizer.bos_id]
    logits, past, attn = runtime.step(np.array([start + ids], dtype=np.int64),
                                      runtime.empty_past(1), memory_kv)
    choices = {len(ids): (logits[0, -1], attn[0, -1])}  # what chose the id at a position
    banned: dict[int, set[int]] = defaultdict(set)
    retries: dict[int, int] = defaultdict(int)
    eos_bans = 0
    fallback: tuple[int, set[str]] | None = None  # where the report first tried to end
    checked = len(_final_spans(tokenizer, ids, ended=False))  # the prefix is accepted
    while len(start) + len(ids) < runtime.max_len:
        position = len(ids)
        scores, row = choices[position]
        scores = scores.copy()
        scores[PROMPT_IDS] = -np.inf
        scores[list(banned[position])] = -np.inf
        token = int(scores.argmax())
        ended = token in (tokenizer.eos_id, tokenizer.pad_id)
        if not ended:
            ids.append(token)
            attention.append(row)
        spans = _final_spans(tokenizer, ids, ended)
        bad = next((s for s in spans[checked:] if guard.contradicts(
            detokenize(tokenizer.tokens(ids[s[0]:s[1]]), tokenizer.truecase))), None)
        at = None if bad is None else _ban_position(tokenizer, guard, ids, bad)
        if at is not None and retries[at] < max_retries:
            retries[at] += 1
            banned[at].add(ids[at])
            del ids[at:], attention[at:]  # the cache is cut to fit when next fed
            continue
        checked = len(spans)
        if ended:
            texts = [detokenize(tokenizer.tokens(ids[a:b]), tokenizer.truecase)
                     for a, b in spans]
            missing = guard.missing(texts)
            if missing and fallback is None:
                fallback = (len(ids), missing)
            if missing and eos_bans < max_eos_bans:
                eos_bans += 1
                banned[position].add(token)
                continue
            if fallback is not None and missing >= fallback[1]:
                del ids[fallback[0]:], attention[fallback[0]:]  # the extra text stated nothing
            break
        logits, past, attn = runtime.step(np.array([[token]], dtype=np.int64),
                                          past[:, :, :, :, : len(start) + len(ids) - 1],
                                          memory_kv)
        choices[len(ids)] = (logits[0, -1], attn[0, -1])
    return GuardedReport(ids, attention)


def _ban_position(tokenizer: ReportTokenizer, guard: FindingsGuard, ids: Sequence[int],
                  span: tuple[int, int]) -> int:
    """Where a bad sentence is decoded again: at its side word if only its side is wrong
    (the rest of it stands; at the article before it when the side read is bilateral,
    "the right lung base" becoming "both lung bases"), else from its first token."""
    words = tokenizer.tokens(ids[span[0] : span[1]])
    text = detokenize(words, tokenizer.truecase)
    if guard.wrong_side(text) and not guard.misstates_findings(text):
        read = {guard.sides.get(label) for label, value in label_sentence(text).items()
                if value != NEGATIVE}
        bilateral = "bilateral" in read
        for offset, word in enumerate(words):
            if SIDE_WORDS.fullmatch(word.lower()):
                article = offset > 0 and words[offset - 1].lower() == "the"
                return span[0] + offset - int(bilateral and article)
    return span[0]


def _final_spans(tokenizer: ReportTokenizer, ids: Sequence[int],
                 ended: bool) -> list[tuple[int, int]]:
    """[start, end) of sentences known to be complete: a full stop is final once the next
    token is known (it may be a decimal point), everything at the end of the report."""
    words = tokenizer.tokens(ids)
    return [(s.start, s.end) for s in report_spans(words) if ended or s.end < len(words)]

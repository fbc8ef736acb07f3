"""Word-level report tokenizer: one token per word, so each word gets its own grounding map.

Reports come from a small, closed vocabulary, so a word-level model (``tokenizers``'
``WordLevel``) keeps words whole, which is what makes a per-token attention map readable
as "where this word comes from". Digits are split one per token so that any size or
distance ("3.9 cm", "7th rib") is spelled from ten digits instead of becoming ``[UNK]``.

Text is lower-cased for the model; ``decode`` turns tokens back into readable prose:
sentence starts capitalised, no space before punctuation, digits and decimal points
rejoined, and words the training reports always wrote in capitals (``CT``, ``FINDINGS``)
restored from a small true-case table learned at training time and saved with the vocab.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

from radreport.model.prompt import PROMPT_TOKENS, ClinicalContext, prompt_tokens

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
PROMPT_SET = frozenset(PROMPT_TOKENS)

# Paragraph breaks, single digits, letter runs, single punctuation marks.
TOKEN_PATTERN = r"\n+|\d|[^\W\d_]+|[^\w\s]|_"
NO_SPACE_BEFORE = frozenset(".,;:!?)%")
NO_SPACE_AFTER = frozenset("(")
JOINERS = frozenset("-/")  # glued on both sides: "left-sided"
SENTENCE_ENDS = frozenset(".!?:")
ORDINAL_SUFFIXES = frozenset({"st", "nd", "rd", "th"})


class ReportTokenizer:
    """A trained ``tokenizers.Tokenizer`` plus the true-case table ``decode`` needs."""

    def __init__(self, tokenizer: Tokenizer, truecase: dict[str, str] | None = None) -> None:
        self._tok = tokenizer
        self.truecase: dict[str, str] = dict(truecase or {})
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self._id(t) for t in SPECIAL_TOKENS
        )

    # --- construction -------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], min_frequency: int = 1) -> ReportTokenizer:
        texts = list(texts)
        tok = _blank_tokenizer()
        # The v2 prompt's tokens come right after the four specials (ids 4...); the ONNX
        # runtime relies on that (onnx_runtime.PROMPT_IDS).
        trainer = trainers.WordLevelTrainer(
            special_tokens=[*SPECIAL_TOKENS, *PROMPT_TOKENS], min_frequency=min_frequency
        )
        tok.train_from_iterator(texts, trainer=trainer)
        _add_post_processor(tok)
        return cls(tok, learn_truecase(texts))

    def save(self, path: str | Path) -> None:
        payload = {"tokenizer": json.loads(self._tok.to_str()), "truecase": self.truecase}
        Path(path).write_text(json.dumps(payload, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> ReportTokenizer:
        payload = json.loads(Path(path).read_text())
        return cls(Tokenizer.from_str(json.dumps(payload["tokenizer"])), payload["truecase"])

    # --- use ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        """``[BOS] words... [EOS]``."""
        return list(self._tok.encode(text).ids)

    def encode_plain(self, text: str) -> list[int]:
        """Token ids without BOS/EOS, for building a sequence piece by piece."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def id_to_token(self, idx: int) -> str:
        token = self._tok.id_to_token(idx)
        return UNK if token is None else token

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text up to the first ``[EOS]``; ``[PAD]``/``[BOS]`` are skipped, and so is
        a v2 prompt (everything before ``[BOS]``)."""
        ids = list(ids)
        if self.bos_id in ids:
            ids = ids[ids.index(self.bos_id) + 1 :]
        words: list[str] = []
        for idx in ids:
            if idx == self.eos_id:
                break
            token = self.id_to_token(idx)
            if idx not in (self.pad_id, self.bos_id) and token not in PROMPT_SET:
                words.append(token)
        return detokenize(words, self.truecase)

    def encode_prompt(self, present: Sequence[bool],
                      context: ClinicalContext | None = None) -> list[int]:
        """The v2 decoder prompt (``prompt.PROMPT_LEN`` ids) for these label decisions."""
        indication = context.indication if context is not None else None
        words = prompt_tokens(present, context, self.encode_plain(indication or ""), PAD)
        return [w if isinstance(w, int) else self._id(w) for w in words]

    @property
    def has_prompt(self) -> bool:
        """Whether this vocabulary has the v2 prompt's tokens (v1 tokenizers do not)."""
        return self._tok.token_to_id(PROMPT_TOKENS[0]) is not None

    def _id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no special token {token}")
        return int(idx)


def _blank_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = _pre_tokenizer()
    return tok


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # invert=True: the pattern describes the tokens; everything else (spaces) is dropped.
    return pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="removed", invert=True)


def _add_post_processor(tok: Tokenizer) -> None:
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )


def split_words(text: str) -> list[str]:
    """The cased pieces the tokenizer sees, before lower-casing."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def learn_truecase(texts: Iterable[str]) -> dict[str, str]:
    """Most common written form of each word, where that is not plain lower case.

    A capitalised word at a sentence start says nothing about its case, so it is not
    counted; other forms there (``FINDINGS``) are.
    """
    forms: dict[str, Counter[str]] = defaultdict(Counter)
    for text in texts:
        at_start = True
        for word in split_words(text):
            if word.isalpha() and not (at_start and word == word.lower().capitalize()):
                forms[word.lower()][word] += 1
            at_start = word in SENTENCE_ENDS or word.startswith("\n")
    table = {low: counts.most_common(1)[0][0] for low, counts in forms.items()}
    return {low: form for low, form in sorted(table.items()) if form != low}


def detokenize(words: Sequence[str], truecase: dict[str, str] | None = None) -> str:
    """Join word tokens into prose: the inverse of the pre-tokenizer on report text."""
    truecase = truecase or {}
    out: list[str] = []
    prev = ""
    at_start = True
    for word in words:
        cased = truecase.get(word, word)
        if at_start and cased[:1].isalpha():
            cased = cased[0].upper() + cased[1:]
        if out and _needs_space(prev, word, out):
            out.append(" ")
        out.append(cased)
        if word.isalnum() or word in SENTENCE_ENDS or word.startswith("\n"):
            at_start = word in SENTENCE_ENDS or word.startswith("\n")
        prev = word
    return "".join(out)


def _needs_space(prev: str, word: str, out: list[str]) -> bool:
    """Whether a space goes between ``prev`` and ``word`` (``out`` is the text so far)."""
    if word.startswith("\n") or prev.startswith("\n"):
        return False
    if word in NO_SPACE_BEFORE:
        # "3.9": a point between digits is a decimal point, not a sentence end.
        return False
    if prev in NO_SPACE_AFTER or prev in JOINERS or word in JOINERS:
        return False
    if prev.isdigit() and (word.isdigit() or word in ORDINAL_SUFFIXES):
        return False
    return not (prev == "." and word.isdigit() and len(out) >= 2 and out[-2].isdigit())

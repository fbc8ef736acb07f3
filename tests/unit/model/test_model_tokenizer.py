from __future__ import annotations

from pathlib import Path

from radreport.model.tokenizer import SPECIAL_TOKENS, ReportTokenizer, detokenize


def test_special_tokens_come_first(tokenizer: ReportTokenizer) -> None:
    assert [tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)


def test_round_trip_on_200_phantom_reports_and_indications(tokenizer: ReportTokenizer,
                                           report_texts: list[str]) -> None:
    """Exact, with no normalisation: case, digits, punctuation and paragraph breaks."""
    assert len(report_texts) == 400  # 200 reports and their clinical indications
    for text in report_texts:
        ids = tokenizer.encode(text)
        assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
        assert tokenizer.unk_id not in ids
        assert tokenizer.decode(ids) == text


def test_decode_writes_readable_sentences(tokenizer: ReportTokenizer) -> None:
    text = "No pneumothorax. The lungs are clear."
    ids = tokenizer.encode(text.lower())
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([*ids, tokenizer.pad_id, *ids]) == text  # stops at EOS


def test_detokenize_rules() -> None:
    words = ["a", "3", ".", "9", "cm", "mass", "near", "the", "7", "th", "rib", ";",
             "recommend", "ct", ".", "left", "-", "sided", "\n\n", "impression", ":", "ok", "."]
    assert detokenize(words, {"ct": "CT", "impression": "IMPRESSION"}) == (
        "A 3.9 cm mass near the 7th rib; recommend CT. Left-sided\n\nIMPRESSION: Ok."
    )


def test_unknown_words_become_unk(tokenizer: ReportTokenizer) -> None:
    ids = tokenizer.encode("Zebra stripes.")
    assert ids.count(tokenizer.unk_id) == 2


def test_save_and_load(tokenizer: ReportTokenizer, report_texts: list[str],
                       tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    again = ReportTokenizer.load(path)
    assert again.vocab_size == tokenizer.vocab_size and again.truecase == tokenizer.truecase
    text = report_texts[0]
    assert again.encode(text) == tokenizer.encode(text)
    assert again.decode(again.encode(text)) == text

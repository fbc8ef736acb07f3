from __future__ import annotations

import pytest
import torch
from tiny import tiny_config
from torch.utils.data import DataLoader

from radreport.data.phantoms.generator import generate_study
from radreport.model.cache import PhantomReportDataset, render_record, spec_for
from radreport.model.data import area_downsample
from radreport.model.model import RadReportModel
from radreport.model.tokenizer import ReportTokenizer

SEEDS = [0, 1, 4, 5]  # seed 0 has a mass, a pneumothorax and a rib fracture


@pytest.fixture(scope="module")
def dataset(tokenizer: ReportTokenizer) -> PhantomReportDataset:
    return PhantomReportDataset(SEEDS, tokenizer, tiny_config(tokenizer.vocab_size))


def test_item_shapes(dataset: PhantomReportDataset) -> None:
    item = dataset[0]
    L, N = 160, 64
    assert item["images"].shape == (1, 64, 64) and item["images"].dtype == torch.float32
    assert item["images"].min() >= 0.0 and item["images"].max() <= 1.0
    assert item["tokens"].shape == item["targets"].shape == (L,)
    assert item["region_masks"].shape == (L, N)
    assert item["finding_token_mask"].shape == (L,)
    assert item["finding_token_mask"].dtype == torch.bool
    assert item["label_targets"].shape == (14,)
    assert torch.equal(item["tokens"][1:], item["targets"][:-1])  # shifted by one


def test_pieces_tokenise_like_the_whole_report(tokenizer: ReportTokenizer) -> None:
    for seed in SEEDS:
        study = generate_study(seed, 256)
        config = tiny_config(tokenizer.vocab_size)
        record = render_record(study, tokenizer, spec_for(config))
        ids = [int(i) for i in record["ids"] if i != tokenizer.pad_id]
        assert ids == tokenizer.encode(study.report_text)
        assert record["sentence_masks"].shape == (24, 64)
        assert record["sentence"].max() < (record["sentence_masks"].sum(-1) > 0).sum()


def test_finding_tokens_have_non_empty_regions(dataset: PhantomReportDataset,
                                              tokenizer: ReportTokenizer) -> None:
    item = dataset[0]
    flagged = item["finding_token_mask"]
    assert flagged.sum() >= 6
    assert torch.all(item["region_masks"][flagged].sum(-1) > 0)
    words = set(tokenizer.tokens(item["targets"][flagged].tolist()))
    assert {"mass", "pneumothorax", "fracture"} <= words
    assert not words & {".", "the", "is", "a", "3"}
    assert item["label_targets"][9] == 1.0  # Pneumothorax


def test_normal_study_grounds_its_negatives_in_anatomy(tokenizer: ReportTokenizer) -> None:
    """A pertinent negative looks at the organ it rules on: whole organs, not lesions."""
    item = PhantomReportDataset([2], tokenizer, tiny_config(tokenizer.vocab_size))[0]
    flagged = item["finding_token_mask"]
    assert flagged.any()
    covered = item["region_masks"][flagged].sum(-1)  # patches' worth of region
    assert torch.all(covered > 3.0)  # the smallest organ, the mediastinum, is ~4 of 64
    assert {"lungs", "heart"} <= set(tokenizer.tokens(item["targets"][flagged].tolist()))
    assert item["label_targets"][0] == 1.0  # No Finding


def test_area_downsample_keeps_partial_coverage() -> None:
    mask = torch.zeros(256, 256, dtype=torch.bool)
    mask[:16, :8] = True
    grid = area_downsample(mask.numpy(), 8)
    assert grid[0, 0].item() == pytest.approx(16 * 8 / 32**2)
    assert grid.sum().item() == pytest.approx(mask.sum().item() / 32**2)


def test_a_batch_feeds_the_model(dataset: PhantomReportDataset) -> None:
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    torch.manual_seed(0)
    model = RadReportModel(dataset.config)
    out = model(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.loss_parts["ground"] > 0


def test_vocab_and_size_mismatches_are_refused(tokenizer: ReportTokenizer) -> None:
    with pytest.raises(ValueError, match=r"tokenizer vocab_size \d+ exceeds config.vocab_size 8"):
        PhantomReportDataset(SEEDS, tokenizer, tiny_config(8))
    with pytest.raises(ValueError, match=r"study_size 256 is smaller than config\.image_size 512"):
        PhantomReportDataset(SEEDS, tokenizer,
                             tiny_config(tokenizer.vocab_size, image_size=512))

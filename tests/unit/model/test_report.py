"""The torch-free report path: preprocessing, and the shipped default model end to end."""

from __future__ import annotations

import numpy as np
import pytest

from radreport.data.phantoms import generate_study
from radreport.model.report import (
    DEFAULT_MODEL_DIR,
    VARIANTS,
    ModelInfo,
    ReportDecoded,
    ReportGenerator,
    SentenceDecoded,
    model_files,
    rounded_map,
    to_model_input,
)


def test_square_input_is_the_block_mean_the_model_was_trained_on() -> None:
    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    pixels, letterbox = to_model_input(image, 256)
    block_mean = image.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(pixels, block_mean, atol=1e-6)
    assert (letterbox.scale, letterbox.pad_x, letterbox.pad_y) == (0.5, 0, 0)


@pytest.mark.parametrize("shape", [(512, 512), (2048, 1700), (300, 200)])
def test_any_input_is_resized_as_training_resizes(shape: tuple[int, int]) -> None:
    """512 -> 384 px (the benchmark's studies to 0.3's input) is not a whole ratio: serving
    must average the same windows as training's torch area interpolation, not a box filter."""
    import torch

    from radreport.model.data import area_downsample

    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    pixels, letterbox = to_model_input(image, 384)
    h, w = round(shape[0] * letterbox.scale), round(shape[1] * letterbox.scale)
    expected = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(h, w),
                                               mode="area")[0, 0].numpy()
    top, left = int(letterbox.pad_y), int(letterbox.pad_x)
    np.testing.assert_allclose(pixels[top : top + h, left : left + w], expected, atol=1e-5)
    if shape[0] == shape[1]:
        np.testing.assert_allclose(pixels, area_downsample(image, 384).numpy(), atol=1e-5)


def test_wide_input_keeps_its_aspect_and_is_padded_with_zeros() -> None:
    image = np.ones((1000, 2000), dtype=np.float32)
    pixels, letterbox = to_model_input(image, 256)
    assert pixels.shape == (256, 256) and pixels.dtype == np.float32
    rows = np.flatnonzero(pixels.any(axis=1))
    assert (rows[0], rows[-1]) == (64, 191)  # 128 image rows, 64 padding rows above and below
    assert letterbox.to_original((0, 64, 256, 192)) == (0, 0, 2000, 1000)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_model_input(np.zeros((3, 64, 64), np.float32), 256)
    with pytest.raises(ValueError, match="variant"):
        model_files(DEFAULT_MODEL_DIR, "int4")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def generator() -> ReportGenerator:
    return ReportGenerator(threads=1)


SHIPPED_VARIANTS = ("fp32", "int8", "fp16")


def test_shipped_model_folder_is_complete_and_small() -> None:
    info = ModelInfo.load(DEFAULT_MODEL_DIR / "model.json")
    assert (info.name, info.version, info.image_size) == ("radreport-phantom", "0.4.0", 512)
    assert set(SHIPPED_VARIANTS) <= set(VARIANTS)
    graphs = [p for v in SHIPPED_VARIANTS for p in model_files(DEFAULT_MODEL_DIR, v)]
    files = [*graphs, DEFAULT_MODEL_DIR / "tokenizer.json"]
    assert all(p.is_file() for p in files)
    assert sum(p.stat().st_size for p in files) <= 40_000_000  # issue 15: 40 MB, all variants
    for name in ("calibration.json", "intensity_reference.json"):  # safety net, drift
        assert (DEFAULT_MODEL_DIR / name).is_file()
    assert "not for clinical use" in (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text().lower()


def test_shipped_model_drafts_grounded_reports(generator: ReportGenerator) -> None:
    studies = [generate_study(seed, 512) for seed in range(2_000_000, 2_000_004)]
    drafts = generator.generate([s.image for s in studies])
    for draft in drafts:
        assert draft.findings and draft.impression
        assert draft.model_version == generator.info.model_version
        assert {s.section for s in draft.sentences} == {"findings", "impression"}
        assert set(draft.label_probs) == set(generator.info.labels)
        for sentence in draft.sentences:
            assert sentence.text.endswith(".") and not sentence.text[0].islower()
            assert sentence.heatmap.shape == (128, 128)  # 0.4.0: the fine head, stride 4
            assert np.isclose(sentence.heatmap.sum(), 1.0, atol=1e-3)
            assert sentence.boxes
            for x0, y0, x1, y1 in sentence.boxes:
                assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    # the normal study (seed 2,000,000) is reported as normal
    assert "No acute" in drafts[0].impression
    assert generator.generate([]) == []


def test_a_large_input_gives_the_same_report_with_boxes_in_its_own_pixels(
        generator: ReportGenerator) -> None:
    # at the model's own side, so the 4x larger copy letterboxes to exactly the same input
    # (box averaging at a ratio that is not whole is not the same function of the content)
    side = generator.info.image_size
    image = generate_study(2_000_001, side).image
    large_image = np.kron(image, np.ones((4, 4), np.float32))  # 1,536 px, same content
    small, large = (generator.generate([img])[0] for img in (image, large_image))
    assert large.text == small.text and large.letterbox.original_shape == (4 * side, 4 * side)
    for a, b in zip(small.sentences, large.sentences, strict=True):
        assert [tuple(4 * v for v in box) for box in a.boxes] == b.boxes


def test_streamed_sentences_are_the_reports_and_come_before_its_end(
        generator: ReportGenerator) -> None:
    studies = [generate_study(seed, 512) for seed in range(2_000_010, 2_000_016)]
    prepared = [to_model_input(s.image, generator.info.image_size) for s in studies]
    batch = np.stack([pixels for pixels, _ in prepared])[:, None]
    letterboxes = [letterbox for _, letterbox in prepared]
    whole = generator.generate_prepared(batch, letterboxes)
    events = list(generator.stream_prepared(batch, letterboxes))
    for item, draft in enumerate(whole):
        mine = [(n, e) for n, e in enumerate(events) if e.item == item]
        sentences = [e for _, e in mine if isinstance(e, SentenceDecoded)]
        (end,) = [(n, e) for n, e in mine if isinstance(e, ReportDecoded)]
        assert [s.index for s in sentences] == list(range(len(draft.sentences)))
        assert len(draft.sentences) >= 2
        assert max(n for n, e in mine if isinstance(e, SentenceDecoded)) < end[0]
        assert end[1].report.to_dict() == draft.to_dict()
        for streamed, final in zip(sentences, draft.sentences, strict=True):
            assert streamed.sentence.to_dict() == final.to_dict()
    # a batch's sentences interleave: the first report's first sentence is not held back
    # until that report (or the batch) is complete
    first_end = next(n for n, e in enumerate(events) if isinstance(e, ReportDecoded))
    first_sentence = next(n for n, e in enumerate(events) if isinstance(e, SentenceDecoded))
    assert first_sentence < first_end
    assert len({e.item for e in events[:first_end] if isinstance(e, SentenceDecoded)}) > 1


def test_served_maps_keep_three_significant_digits_and_drop_the_faint_tail() -> None:
    heatmap = np.array([[0.5, 0.123456], [0.0000123, 0.00004999]])
    rounded = rounded_map(heatmap)
    assert rounded.tolist() == [[0.5, 0.123], [0.0, 0.0]]  # below 1e-4 of the peak: 0
    smooth = np.random.default_rng(0).random((96, 96)) ** 4
    smooth /= smooth.sum()
    served = rounded_map(smooth)
    assert abs(served.sum() - 1.0) < 0.01
    assert smooth.flat[served.argmax()] >= 0.998 * smooth.max()  # the peak, up to rounding
    assert np.abs(served - smooth).max() <= 0.001 * smooth.max()
    assert not rounded_map(np.zeros((4, 4))).any()

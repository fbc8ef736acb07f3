"""MS-CXR boxes as training regions (data.ms_cxr): the served letterbox geometry on the patch
grid, phrases finding their report sentences, the boxes following geometric augmentation,
and a tiny epoch whose grounding and query losses are non-zero only with the boxes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from radreport.data.datasets.ms_cxr import MS_CXR_FILE, Box, GroundedImage, Phrase, read_ms_cxr
from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.data import area_downsample
from radreport.model.images import letterbox
from radreport.model.records import StreamingDataset, streaming_dataset
from radreport.model.regions import box_mask, grid_u8, image_regions, report_words
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import TrainConfig, load_config, model_config_for, train

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
MIMIC = FIXTURES / "mimic-cxr-jpg"
CSV = FIXTURES / "ms-cxr" / MS_CXR_FILE
TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"
TINY_V2 = ('model.arch="chexquery"', "model.patch=16", "model.conv_channels=[4, 8, 8, 16, 16]",
           "model.enc_width=16", "model.enc_heads=2", "model.query_layers=1",
           "model.dec_depth=2", "model.dec_width=16", "model.dec_heads=2",
           "model.prompt_len=28", "model.max_len=178", "train.batch_size=2",
           "train.track=false", "train.bn_batches=2", 'data.dataset="mimic-cxr-jpg"',
           "data.num_workers=0", "data.context_dropout=0.0")
HEART = "06a435dc-564057d0-016dbaf1-757e9747-8ea2193b"  # s50000021: three phrases
NO_BOXES = "s50000012"  # a train study whose image has none
CARDIOMEGALY = CHEXPERT_LABELS.index("Cardiomegaly")


def config(root: Path, *overrides: str) -> TrainConfig:
    return load_config(TINY, [*TINY_V2, f'data.root="{root}"', *overrides])


# --- geometry ------------------------------------------------------------------------------


def test_a_box_lands_on_the_right_patches_of_a_letterboxed_portrait_image() -> None:
    # A 20 x 40 (w x h) image read, the boxes drawn on its 200 x 400 original. Into an 8 px
    # square: scale 0.2, 4 x 8 px wide and high, padded by 2 px left and right.
    full = box_mask([Box(0, 0, 100, 200)], (200, 400), (40, 20), 8)  # x 0..10, y 0..20 px
    expected = np.zeros((8, 8), np.float32)
    expected[0:4, 2:4] = 1.0  # the image's top-left quarter: rows 0-3, columns 2-3
    np.testing.assert_array_equal(full, expected)
    grid = np.zeros((4, 4), np.uint8)
    grid[0:2, 1] = 255  # patches of 2 x 2 px
    np.testing.assert_array_equal(grid_u8(full, 4), grid.flatten())

    half = box_mask([Box(150, 200, 50, 100)], (200, 400), (40, 20), 8)  # x 15..20, y 20..30
    expected = np.zeros((8, 8), np.float32)
    expected[4:6, 5] = 1.0  # square x 5..6 (column 5), y 4..6
    np.testing.assert_array_equal(half, expected)
    grid = np.zeros((4, 4), np.uint8)
    grid[2, 2] = 128  # half of patch (2, 2) covered
    np.testing.assert_array_equal(grid_u8(half, 4), grid.flatten())


@pytest.mark.parametrize(("shape", "box"), [((80, 40), Box(8, 30, 20, 24)),
                                            ((40, 120), Box(33, 3, 60, 21))])
def test_box_masks_follow_the_image_through_the_served_letterbox(
        shape: tuple[int, int], box: Box) -> None:
    """The box painted into the image and letterboxed as served lands where box_mask says
    (exact block means: the sides shrink by a whole factor)."""
    image = np.zeros(shape, np.float32)
    image[int(box.y) : int(box.y + box.h), int(box.x) : int(box.x + box.w)] = 1.0
    size = max(shape) // 10
    source = (shape[1] * 3, shape[0] * 3)  # boxes drawn on a 3x larger original
    scaled = Box(box.x * 3, box.y * 3, box.w * 3, box.h * 3)
    np.testing.assert_allclose(box_mask([scaled], source, shape, size), letterbox(image, size),
                               atol=1e-6)


# --- phrases and report sentences ----------------------------------------------------------


def test_phrases_ground_the_sentences_that_hold_them() -> None:
    text = ("FINDINGS: Heart size is moderately enlarged. Small bilateral pleural effusions are "
            "present.\n\nIMPRESSION: Cardiomegaly and small bilateral pleural effusions.")
    image = GroundedImage("d", 100, 100, (
        Phrase("Pleural Effusion", "Pleural Effusion", "small BILATERAL pleural effusions",
               (Box(0, 60, 40, 30), Box(60, 60, 40, 30))),
        Phrase("Cardiomegaly", "Cardiomegaly", "Heart size is moderately enlarged",
               (Box(30, 30, 40, 40),)),
        Phrase("Edema", "Edema", "interstitial edema", (Box(0, 0, 100, 50),))))
    regions = image_regions(image, text, 40)
    words = ["[BOS]", *report_words(text)]
    grounded = {slot: [w for w, s in zip(words, regions.sentence.tolist(), strict=False)
                       if s == slot] for slot in range(3)}
    assert grounded[0] == ["heart", "size", "is", "moderately", "enlarged", "."]
    assert grounded[1][:4] == ["small", "bilateral", "pleural", "effusions"]
    assert grounded[2][:3] == ["cardiomegaly", "and", "small"]  # the impression too
    assert regions.slots == ((1,), (0,), (0,))  # sentence masks: the phrases' unions
    assert regions.unmatched == 1  # "interstitial edema" is in no sentence
    content = [w for w, g in zip(words, regions.ground.tolist(), strict=False) if g]
    assert "is" not in content and "." not in content and "enlarged" in content
    assert regions.queries == (CHEXPERT_LABELS.index("Pleural Effusion"), CARDIOMEGALY,
                               CHEXPERT_LABELS.index("Edema"))
    # cut at 4 ids: [BOS] "findings" ":" "heart"
    assert image_regions(image, text, 4).sentence.tolist() == [-1, -1, -1, 0]


# --- examples ------------------------------------------------------------------------------


def dataset(cfg: TrainConfig, split: str = "train", train_mode: bool = True
            ) -> StreamingDataset:
    tokenizer = ReportTokenizer.train(["FINDINGS: heart size is moderately enlarged. small "
                                       "bilateral pleural effusions. lobe opacity."])
    return streaming_dataset(cfg.data, split, tokenizer, model_config_for(cfg, tokenizer), 0,
                             train_mode, False)


def test_examples_carry_boxes_only_where_an_image_has_them() -> None:
    data = dataset(config(MIMIC, f'data.ms_cxr="{CSV}"'))
    studies = [r.decode() for r in data.disk.arrays.paths]
    heart = data[next(i for i, p in enumerate(studies) if HEART in p)]
    boxed = heart["query_masks"].sum(dim=1) > 0
    assert boxed.nonzero().flatten().tolist() == sorted(
        CHEXPERT_LABELS.index(n) for n in ("Atelectasis", "Cardiomegaly", "Pleural Effusion"))
    assert (heart["query_weight"][boxed] == 1).all()
    assert heart["finding_token_mask"].any()
    grounded = heart["region_masks"][heart["finding_token_mask"]]
    assert (grounded.sum(dim=1) > 0).all()  # every grounded word has its sentence's region

    plain = data[next(i for i, p in enumerate(studies) if f"/{NO_BOXES}/" in p)]
    assert not plain["finding_token_mask"].any() and plain["region_masks"].sum() == 0
    assert plain["query_masks"].sum() == 0
    assert torch.equal(plain["query_weight"][:14], plain["label_targets"])  # unchanged


def test_boxes_follow_the_geometric_augmentation(tmp_path: Path) -> None:
    """An image that is black but for a white block exactly where its one box is: after
    augmentation the query mask still lies on the white block."""
    root = shutil.copytree(MIMIC, tmp_path / "mimic")
    image_path = next(root.rglob(f"{HEART}.jpg"))
    pixels = np.zeros((32, 32), np.uint8)
    pixels[12:20, 8:20] = 255  # x 8..20, y 12..20 of the 32 px image
    Image.fromarray(pixels).save(image_path, format="PNG")  # lossless; PIL reads by content
    boxes = tmp_path / MS_CXR_FILE
    with boxes.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["dicom_id", "category_name", "label_text", "x", "y", "w", "h",
                      "image_width", "image_height"])
        out.writerow([HEART, "Cardiomegaly", "Heart size is moderately enlarged", 800, 1200,
                      1200, 800, 3200, 3200])
    data = dataset(config(root, f'data.ms_cxr="{boxes}"', "data.augment_geometry=1.0"))
    index = next(i for i, p in enumerate(data.disk.arrays.paths) if HEART in p.decode())
    grid = data.disk.spec.grid
    still = None
    moved = 0
    for epoch in range(6):
        data.epoch = epoch
        example = data[index]
        mask = example["query_masks"][CARDIOMEGALY]
        seen = area_downsample(example["images"][0].numpy(), grid).flatten()
        np.testing.assert_allclose(mask.numpy(), seen.numpy(), atol=0.03)
        if still is None:
            data.train = False  # no augmentation: the box as drawn
            still = data[index]["query_masks"][CARDIOMEGALY]
            data.train = True
        moved += float((mask - still).abs().max()) > 0.05
    assert moved >= 5  # the augmentation did move it


# --- a tiny epoch --------------------------------------------------------------------------


def last_metrics(run: Path) -> dict[str, float]:
    with (run / "metrics.csv").open() as f:
        return {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if v}


def test_grounding_and_query_losses_only_with_boxes(tmp_path: Path) -> None:
    train(config(MIMIC), tmp_path / "plain", progress=False)
    train(config(MIMIC, f'data.ms_cxr="{CSV}"', "data.augment_geometry=0.5"),
          tmp_path / "boxes", progress=False)
    plain, boxes = last_metrics(tmp_path / "plain"), last_metrics(tmp_path / "boxes")
    for part in ("ground", "query"):
        assert plain[f"train_{part}"] == 0.0 and plain[f"val_{part}"] == 0.0
        assert boxes[f"train_{part}"] > 0 and boxes[f"val_{part}"] > 0  # 3b9dfdaf: validate
    assert np.isfinite(list(boxes.values())).all()


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.ms_cxr holds boxes on MIMIC-CXR-JPG"):
        load_config(TINY, [f'data.ms_cxr="{CSV}"'])  # phantoms
    with pytest.raises(FileNotFoundError, match="MS-CXR CSV"):
        train(config(MIMIC, f'data.ms_cxr="{tmp_path / "none.csv"}"'), tmp_path / "run",
              progress=False)
    assert len(read_ms_cxr(CSV)) == 4

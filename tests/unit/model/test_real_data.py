"""Training on the real-dataset layouts (issue 18, items 1-2), on the fixture datasets: a
short epoch on each, the export serving its own vocabulary, labels and text by dataset,
unreadable images skipped and counted, no flips."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from radreport.cli import app
from radreport.data.datasets import open_dataset, patient_split, study_labels
from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.data import phantom_report_texts
from radreport.model.images import augment_geometry
from radreport.model.records import (
    report_text,
    split_records,
    streaming_dataset,
    training_labels,
)
from radreport.model.report import ReportGenerator
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import TrainConfig, load_config, model_config_for, train

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"
KINDS = ("mimic-cxr-jpg", "iu-xray", "chexpert")
# A v2 model (CheXQuery encoder, prompted decoder) small enough for seconds-long epochs.
TINY_V2 = ('model.arch="chexquery"', "model.patch=16", "model.conv_channels=[4, 8, 8, 16, 16]",
           "model.enc_width=16", "model.enc_heads=2", "model.query_layers=1",
           "model.dec_depth=2", "model.dec_width=16", "model.dec_heads=2",
           "model.prompt_len=28", "model.max_len=178", "train.batch_size=2",
           "train.track=false", "train.bn_batches=2")
# IU X-ray uids whose patient_split is "validate": the fixture has only train patients.
IU_VALIDATE = {"15": "Xray Chest PA and Lateral,Cough,None.,The heart is normal in size. "
                     "The lungs are clear. There is no pneumothorax.,No acute disease.",
               "57": "Xray Chest PA and Lateral,Dyspnea,,Small right pleural effusion. "
                     "Heart size is normal.,Small right pleural effusion."}


def config(kind: str, root: Path, *overrides: str) -> TrainConfig:
    return load_config(TINY, [*TINY_V2, f'data.dataset="{kind}"', f'data.root="{root}"',
                              "data.num_workers=0", *overrides])


def metrics(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def iu_with_validate(dest: Path) -> Path:
    """The IU fixture plus two validate-split patients, in the same layout."""
    root = shutil.copytree(FIXTURES / "iu-xray", dest)
    images = root / "images" / "images_normalized"
    with (root / "indiana_reports.csv").open("a") as reports, \
            (root / "indiana_projections.csv").open("a") as projections:
        for uid, row in IU_VALIDATE.items():
            assert patient_split(uid) == "validate"
            reports.write(f"{uid},normal,normal,{row}\n")
            projections.write(f"{uid},{uid}_IM-0{uid}-1001.dcm.png,Frontal\n")
            shutil.copy(images / "1_IM-0001-4001.dcm.png", images / f"{uid}_IM-0{uid}-1001.dcm.png")
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"mimic-cxr-jpg": FIXTURES / "mimic-cxr-jpg", "chexpert": FIXTURES / "chexpert",
            "iu-xray": iu_with_validate(tmp_path_factory.mktemp("data") / "iu-xray")}


@pytest.fixture(scope="module")
def runs(roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short epoch on each layout."""
    out = tmp_path_factory.mktemp("runs")
    for kind, root in roots.items():
        train(config(kind, root), out / kind, progress=False)
    return {kind: out / kind for kind in roots}


# --- labels, text, vocabulary -------------------------------------------------------------


def test_labels_and_text_follow_each_dataset() -> None:
    mimic = {r.study_id: r for r in split_records("mimic-cxr-jpg", FIXTURES / "mimic-cxr-jpg",
                                                  "train")}
    labels, ours = training_labels(mimic["s50000011"])
    named = dict(zip(CHEXPERT_LABELS, labels.tolist(), strict=True))
    assert not ours
    assert named["Lung Opacity"] == 1 and named["Pneumonia"] == 1  # 1 and uncertain (-1)
    assert named["Pneumothorax"] == 0 and named["Edema"] == 0  # 0 and not mentioned
    assert report_text(mimic["s50000012"]).startswith("IMPRESSION: ")  # no FINDINGS section
    assert report_text(mimic["s50000011"]).startswith("FINDINGS: ")
    assert "\n\nIMPRESSION: " in report_text(mimic["s50000011"])

    for record in split_records("chexpert", FIXTURES / "chexpert", "train"):
        assert report_text(record) == ""
        assert not training_labels(record)[1]
    iu = {r.study_id: r for r in split_records("iu-xray", FIXTURES / "iu-xray", "train")}
    labels, ours = training_labels(iu["2"])  # "Stable mild cardiomegaly."
    assert ours and labels[CHEXPERT_LABELS.index("Cardiomegaly")] == 1
    assert labels[CHEXPERT_LABELS.index("No Finding")] == 0
    unlabelled = replace(mimic["s50000011"], labels={})  # a MIMIC study without a label row
    labels, ours = training_labels(unlabelled)
    assert ours and labels.tolist() == study_labels(unlabelled)[0]  # the labeler reads it


def test_tokenizer_comes_from_the_train_split(runs: dict[str, Path]) -> None:
    tokenizer = ReportTokenizer.load(runs["mimic-cxr-jpg"] / "tokenizer.json")
    dataset = open_dataset("mimic-cxr-jpg", FIXTURES / "mimic-cxr-jpg")
    words = {split: {w for r in dataset.records(split=split)
                     for w in report_text(r).lower().replace(".", " ").split()}
             for split in ("train", "validate", "test")}
    vocab = set(tokenizer._tok.get_vocab())
    train_only = words["train"] - words["validate"] - words["test"]
    held_out_only = (words["validate"] | words["test"]) - words["train"]
    assert {w for w in train_only if w.isalpha()} <= vocab
    assert held_out_only and not {w for w in held_out_only if w.isalpha()} & vocab
    phantom = set(ReportTokenizer.train(phantom_report_texts(range(50)))._tok.get_vocab())
    assert vocab - phantom, "the vocabulary is not the phantom one"
    assert tokenizer.has_prompt and tokenizer.encode_prompt([False] * 14)[0] >= 4
    rare = config("mimic-cxr-jpg", FIXTURES / "mimic-cxr-jpg", "data.min_word_count=2")
    from radreport.model.train import build_tokenizer

    assert build_tokenizer(rare).vocab_size < tokenizer.vocab_size


# --- one epoch on each layout, export, serve ----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_one_epoch_trains_without_regions(runs: dict[str, Path], kind: str) -> None:
    rows = metrics(runs[kind])
    last = rows[-1]
    assert all(np.isfinite(v) for v in last.values())
    for part in ("ground", "query"):  # no regions: exactly zero, not garbage
        assert last[f"train_{part}"] == 0.0 and last[f"val_{part}"] == 0.0
    assert last["train_label"] > 0 and last["unreadable"] == 0
    if kind == "chexpert":  # no text: the LM loss skips every study
        assert last["train_lm"] == 0.0 and last["val_lm"] == 0.0
    else:
        assert last["train_lm"] > 0


def test_export_serves_its_own_vocabulary(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["mimic-cxr-jpg"]
    folder = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--checkpoint", str(run / "best.pt"),
                                 "--out", str(folder), "--name", "mimic-test"])
    assert result.exit_code == 0, result.output
    assert (folder / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    info = json.loads((folder / "model.json").read_text())
    assert info["train_config"]["data"]["dataset"] == "mimic-cxr-jpg"

    image = next(FIXTURES.glob("mimic-cxr-jpg/files/p10/p10000101/s50000011/0e3d*.jpg"))
    result = runner.invoke(app, ["draft", str(image), "--model", str(folder)])
    assert result.exit_code == 0, result.output
    tokenizer = ReportTokenizer.load(run / "tokenizer.json")
    from PIL import Image

    pixels = np.asarray(Image.open(image), dtype=np.float32) / 255.0
    draft = ReportGenerator(folder).generate([pixels])[0]  # what the Triton backend runs
    assert draft.text and draft.text in result.output
    # written with the run's vocabulary (not the phantom one, which reads the ids otherwise)
    words = [w for w in tokenizer.tokens(draft.token_ids) if w.isalpha()]
    assert words and all(w in draft.text.lower() for w in words)
    phantom = ReportTokenizer.train(phantom_report_texts(range(50)))
    assert phantom.tokens(draft.token_ids) != tokenizer.tokens(draft.token_ids)
    vocab = set(tokenizer._tok.get_vocab())
    assert {"degenerative", "treatment", "spine"} <= vocab - set(phantom._tok.get_vocab())
    assert "[UNK]" not in draft.text


# --- unreadable images --------------------------------------------------------------------


def corrupt_copy(dest: Path) -> tuple[Path, int]:
    """The MIMIC fixture with one training image overwritten by bytes no decoder reads."""
    root = shutil.copytree(FIXTURES / "mimic-cxr-jpg", dest)
    records = list(split_records("mimic-cxr-jpg", root, "train"))
    assert records[1].image_path is not None
    records[1].image_path.write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")
    return root, 1


def test_unreadable_image_is_skipped_counted_and_logged_without_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, bad = corrupt_copy(tmp_path / "mimic")
    cfg = config("mimic-cxr-jpg", root)
    tokenizer = ReportTokenizer.train(["FINDINGS: clear lungs."])
    dataset = streaming_dataset(cfg.data, "train", tokenizer, model_config_for(cfg, tokenizer),
                                0, True, False)
    with caplog.at_level(logging.WARNING, logger="radreport.model.records"):
        example = dataset[bad]
        again = dataset[bad]  # known bad: not decoded or logged again
    assert torch.equal(example["images"], dataset[bad + 1]["images"])  # the next one stands in
    assert torch.equal(again["images"], example["images"])
    assert dataset.unreadable() == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"skipped an unreadable image: train split item {bad} "
                        "(cannot decode: OSError)"]  # no path, no patient id


def test_a_run_with_an_unreadable_image_finishes_and_counts_it(tmp_path: Path) -> None:
    root, _ = corrupt_copy(tmp_path / "mimic")
    run = tmp_path / "run"
    train(config("mimic-cxr-jpg", root, "data.num_workers=2", "train.epochs=2"), run,
          progress=False)  # two worker processes share what they found unreadable
    assert [row["unreadable"] for row in metrics(run)] == [1.0, 1.0]


# --- augmentation, config -----------------------------------------------------------------


def test_geometric_augmentation_never_mirrors() -> None:
    image = torch.zeros(1, 64, 64)
    image[:, 28:36, 4:16] = 1.0  # a bright block on the image's left
    columns = torch.arange(64, dtype=torch.float32)
    for seed in range(50):
        out = augment_geometry(image, 1.0, np.random.default_rng(seed))
        centre = float((out[0].sum(0) * columns).sum() / out.sum())
        assert centre < 20, (seed, centre)  # still on the left, about where it was


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        config("nih", FIXTURES / "mimic-cxr-jpg")
    with pytest.raises(ValueError, match="augment_geometry"):
        load_config(TINY, ["data.augment_geometry=0.5"])  # phantoms: masks would not follow
    shipped = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "mimic-cxr.toml"
    example = load_config(shipped)  # its root is left to --set data.root=...
    with pytest.raises(ValueError, match=r"data\.root '' must be the mimic-cxr-jpg folder"):
        train(example, tmp_path, progress=False)
    given = load_config(shipped, [f'data.root="{FIXTURES / "mimic-cxr-jpg"}"'])
    assert given.data.dataset == "mimic-cxr-jpg" and given.model["max_len"] == 284


# --- what a study without text, sex or age teaches -----------------------------------------


def test_prompt_says_unknown_when_a_dataset_has_no_sex_or_age(roots: dict[str, Path]) -> None:
    cfg = config("mimic-cxr-jpg", roots["mimic-cxr-jpg"], "data.context_dropout=0.0")
    tokenizer = ReportTokenizer.train(["FINDINGS: clear lungs."])
    dataset = streaming_dataset(cfg.data, "train", tokenizer, model_config_for(cfg, tokenizer),
                                0, True, False)
    example = dataset[0]
    prompt = tokenizer.tokens(example["tokens"][:28].tolist())
    assert prompt[14:16] == ["[SEX?]", "[AGE?]"]  # MIMIC-CXR-JPG has neither
    chexpert = config("chexpert", roots["chexpert"], "data.context_dropout=0.0")
    dataset = streaming_dataset(chexpert.data, "train", tokenizer,
                                model_config_for(chexpert, tokenizer), 0, True, False)
    prompt = tokenizer.tokens(dataset[0]["tokens"][:28].tolist())
    assert prompt[14:16] == ["[SEXF]", "[AGE6]"]  # patient00001: female, 68
    assert (dataset[0]["targets"] == tokenizer.pad_id).all()  # no text, nothing to predict


def test_a_batch_without_text_has_zero_lm_loss_and_trains_the_head() -> None:
    from tiny import tiny_config

    from radreport.model.model import RadReportModel

    torch.manual_seed(0)
    model = RadReportModel(tiny_config())
    tokens = torch.zeros(2, 10, dtype=torch.long)
    out = model(torch.rand(2, 1, 64, 64), tokens, targets=tokens.clone(),
                label_targets=torch.ones(2, 14))
    assert out.loss is not None and torch.isfinite(out.loss)
    parts = {k: float(v.detach()) for k, v in out.loss_parts.items()}
    assert parts["lm"] == 0.0 and parts["label"] > 0
    out.loss.backward()
    assert model.label_head.weight.grad is not None and model.label_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(3056, 2544), (37, 64), (64, 64), (20, 31)])
def test_training_images_are_the_served_square(shape: tuple[int, int]) -> None:
    from radreport.model.images import letterbox
    from radreport.model.report import to_model_input

    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    np.testing.assert_allclose(letterbox(image, 64), to_model_input(image, 64)[0], atol=1e-5)


def test_fit_safety_refits_on_the_datasets_own_splits(runs: dict[str, Path],
                                                       roots: dict[str, Path],
                                                       tmp_path: Path) -> None:
    from radreport.model.export import write_model_folder
    from radreport.model.fit_safety_data import encode_split

    run, folder = runs["chexpert"], tmp_path / "model"
    write_model_folder(torch.load(run / "best.pt", weights_only=True), run / "tokenizer.json",
                       folder, "chexpert-test", "0")
    result = CliRunner().invoke(app, ["fit-safety", "--model", str(folder), "--dataset",
                                      "chexpert", "--root", str(roots["chexpert"]),
                                      "--validate", "50", "--train", "50"])
    assert result.exit_code == 0, result.output
    assert "chexpert: 2 validate studies, 0 unreadable images skipped" in result.output
    generator = ReportGenerator(folder)
    assert generator.safety_net.calibration is not None and generator.safety_net.ood is not None
    validate, _ = encode_split(generator, "chexpert", roots["chexpert"], "validate", 50)
    expected = [training_labels(r)[0] for r in split_records("chexpert", roots["chexpert"],
                                                             "validate")]
    np.testing.assert_array_equal(validate.labels, np.stack(expected))  # the labels trained on

"""``radreport export`` makes a self-consistent model folder (issue 18): the safety net and
drift reference refitted on the run's own data, a model card, logged to the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from radreport.cli import app
from radreport.model.drift_reference import REFERENCE_FILE, dataset_reference, phantom_reference
from radreport.model.fit_safety import fit_safety
from radreport.model.fit_safety_data import fit_safety_on_dataset
from radreport.model.model_card import NOT_CLINICAL
from radreport.model.report import ReportGenerator, Variant
from radreport.model.tracking import MODEL_CARD, RunRef
from radreport.model.train import load_config, train

CONFIGS = Path(__file__).parents[3] / "radreport" / "model" / "configs"
CHEXPERT = Path(__file__).parents[2] / "fixtures" / "datasets" / "chexpert"
SMALL = ["--fit-validate", "30", "--fit-train", "30", "--reference-studies", "4",
         "--workers", "1"]
SAFETY_FILES = ("calibration.json", "calibration.int8.json")
VARIANTS: tuple[Variant, ...] = ("fp32", "int8")


def export(run: Path, out: Path, *options: str) -> str:
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(run / "best.pt"),
                                      "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of tiny-v2 on phantoms, tracked in the run folder's own MLflow store."""
    run = tmp_path_factory.mktemp("runs") / "phantoms"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        train(load_config(CONFIGS / "tiny-v2.toml", ["train.epochs=1", 'train.device="cpu"']),
              run, progress=False)
    return run


@pytest.fixture(scope="module")
def chexpert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "chexpert"
    train(load_config(CONFIGS / "tiny-v2.toml", [
        "train.epochs=1", "train.track=false", "train.batch_size=2", "train.bn_batches=2",
        'data.dataset="chexpert"', f'data.root="{CHEXPERT}"']), run, progress=False)
    return run


def test_phantom_export_refits_on_the_validate_split_and_logs_its_card(
        phantom_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    output = export(phantom_run, folder, "--int8", *SMALL)
    for name in (*SAFETY_FILES, REFERENCE_FILE, MODEL_CARD):
        assert (folder / name).is_file(), name
    # the same fit as fit-safety run by hand on the same studies, for each variant
    by_hand = tmp_path / "by-hand"
    shutil.copytree(folder, by_hand)
    for name in SAFETY_FILES:
        (by_hand / name).unlink()
    for variant, name in zip(VARIANTS, SAFETY_FILES, strict=True):
        fit_safety(by_hand, 30, 30, 1, max_review_rate=0.15, variant=variant)
        assert (by_hand / name).read_text() == (folder / name).read_text(), name
    reference = json.loads((folder / REFERENCE_FILE).read_text())
    assert reference == phantom_reference(4, 64)  # training-split phantoms, the model's size
    assert reference["source"] == "training-split phantoms, letterboxed 64 px model inputs"
    card = (folder / MODEL_CARD).read_text()
    assert NOT_CLINICAL in card and "- train: 16 studies" in card
    assert "benchmark phantom validate split (30 studies)" in card
    assert "| val_loss |" in card and "(30 studies)" in output
    assert ReportGenerator(folder, "int8").safety_net.ood is not None  # served with its own
    # export attached the folder and its card to the training run
    ref = RunRef.load(folder)
    assert ref is not None and ref == RunRef.load(phantom_run)
    client = MlflowClient(ref.tracking_uri)
    logged = client.download_artifacts(ref.run_id, f"model_card/{MODEL_CARD}", str(tmp_path))
    assert Path(logged).read_text() == card


def test_no_fit_skips_and_the_card_says_so(phantom_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    export(phantom_run, folder, "--no-fit")
    assert not (folder / "calibration.json").exists()
    assert not (folder / REFERENCE_FILE).exists()
    card = (folder / MODEL_CARD).read_text()
    assert NOT_CLINICAL in card and "not fitted: exported with --no-fit" in card
    assert ReportGenerator(folder).safety_net.calibration is None


def test_an_existing_card_is_kept(phantom_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / MODEL_CARD).write_text("# our own card\n")
    export(phantom_run, folder, "--no-fit")
    assert (folder / MODEL_CARD).read_text() == "# our own card\n"


def test_chexpert_export_refits_on_the_datasets_own_splits(chexpert_run: Path,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "model"
    export(chexpert_run, folder, *SMALL)
    by_hand = tmp_path / "by-hand"
    shutil.copytree(folder, by_hand)
    (by_hand / "calibration.json").unlink()
    fitted = fit_safety_on_dataset(by_hand, "chexpert", CHEXPERT, 30, 30, max_review_rate=0.15)
    assert len(fitted.fit.validate.labels) == 2  # the fixture's validate split, all of it
    assert (by_hand / "calibration.json").read_text() == (folder / "calibration.json"
                                                           ).read_text()
    reference = json.loads((folder / REFERENCE_FILE).read_text())
    assert reference == dataset_reference("chexpert", CHEXPERT, 4, 64)
    assert reference["source"] == "training-split chexpert images, letterboxed 64 px model inputs"
    card = (folder / MODEL_CARD).read_text()
    assert NOT_CLINICAL in card and "- Dataset: chexpert" in card
    assert "chexpert validate split (2 studies)" in card and "0 unreadable images" in card
    assert "CheXpert's labels only" in card and "phantoms" not in card.split("## Fitted")[0]


def test_a_missing_dataset_is_refused_before_anything_is_written(chexpert_run: Path,
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "model"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(chexpert_run / "best.pt"),
                                      "--out", str(folder), "--data-root",
                                      str(tmp_path / "gone")])
    assert result.exit_code == 2 and "--data-root" in result.output
    assert not folder.exists()

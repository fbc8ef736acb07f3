"""``radreport export``: a checkpoint becomes a self-consistent model folder.

Issue 18: a model folder is always self-consistent. After the graphs are written, the
safety net (temperatures, thresholds, uncertain bands and the OOD gate, ``fit_safety``)
is refitted on the run's own dataset, read from the checkpoint's ``train_config``: its
validate split for calibration and the OOD threshold, its train split for the OOD
statistics, the benchmark phantom splits for a phantom run (with ``fit-safety``'s
defaults, so the shipped model's procedure is unchanged). The input-drift reference is
remade from the same training split. Every precision variant exported gets its own
calibration. v1 (``vit``) folders get the drift reference but no safety fit, as before.
A ``MODEL_CARD.md`` says what was fitted on which split, or that fitting was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from radreport.model.drift_reference import (
    REFERENCE_FILE,
    dataset_reference,
    phantom_reference,
    write_reference,
)
from radreport.model.model_card import (
    PHANTOM_POLICY,
    FitRecord,
    TrainingData,
    last_metrics,
    render_card,
    write_card,
)
from radreport.model.report import MODEL_INFO_FILE, ModelInfo, Variant, variant_calibration_file


class DatasetMissing(ValueError):
    """The run's real dataset folder is not on this machine."""


@dataclass(frozen=True)
class FitOptions:
    """How much of each split export fits on; ``fit-safety``'s defaults."""

    validate: int = 1000
    train: int = 2000
    reference: int = 64  # training studies in the drift reference (the shipped: 64)
    critical_sensitivity: float = 1.0
    max_review_rate: float = 0.15
    ood_flag_rate: float = 0.01
    workers: int = 1  # processes rendering phantoms
    root: Path | None = None  # the dataset's folder, if it moved since training


@dataclass(frozen=True)
class ExportResult:
    paths: list[Path]  # everything written
    fitted: list[FitRecord]


def export_model(checkpoint: Path, tokenizer: Path, out: Path, name: str, version: str,
                 opset: int, variants: list[str], fit: FitOptions | None) -> ExportResult:
    """Graphs, tokenizer and ``model.json``; then (unless ``fit`` is None) the safety net
    and drift reference refitted on the run's data; then ``MODEL_CARD.md`` if absent."""
    import torch

    from radreport.model.export import write_model_folder

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data = dict(state.get("train_config", {}).get("data", {}))
    if fit is not None and fit.root is not None:
        data["root"] = str(fit.root)  # the dataset moved since training
    root = None if fit is None else _dataset_root(str(data.get("dataset", "phantoms")), data)
    paths = write_model_folder(state, tokenizer, out, name, version, opset, variants)
    if fit is None:
        fitted = [FitRecord("calibration.json, intensity_reference.json",
                            "not fitted: exported with --no-fit, so this folder has no "
                            "safety net or drift reference of its own; run `radreport "
                            "fit-safety` before serving it")]
    else:
        fitted = fit_folder(out, str(data.get("dataset", "phantoms")), root, fit, variants)
        paths += [out / f.what for f in fitted if (out / f.what).is_file()]
    info = ModelInfo.load(out / MODEL_INFO_FILE)
    card = write_card(out, render_card(
        {"name": info.name, "version": info.version, **info.extra}, training_data(data),
        last_metrics(_metrics_file(checkpoint)), fitted))
    return ExportResult(paths + ([card] if card else []), fitted)


def _metrics_file(checkpoint: Path) -> Path:
    """``metrics.csv`` of the run: beside the checkpoint, or above a ``checkpoint_dir``."""
    here = checkpoint.parent / "metrics.csv"
    return here if here.is_file() else checkpoint.parent.parent / "metrics.csv"


def fit_folder(folder: Path, kind: str, root: Path | None, fit: FitOptions,
               variants: list[str]) -> list[FitRecord]:
    """Refit the safety net (v2 only, each variant) and the drift reference on dataset
    ``kind`` at ``root`` (None: phantoms); what was fitted on which split, for the card."""
    info = ModelInfo.load(folder / MODEL_INFO_FILE)
    records: list[FitRecord] = []
    if info.extra.get("model_config", {}).get("arch") == "chexquery":
        for variant in ("fp32", *variants):
            records.append(_fit_safety(folder, kind, root, fit, variant))  # type: ignore[arg-type]
        records.append(FitRecord("grounding.json", "not fitted at export: `radreport "
                                 "fit-grounding` tunes it on phantom region masks" + (
                                     "" if root is None else ", which this dataset lacks")))
    else:
        records.append(FitRecord("calibration.json", "not fitted: the safety net is fitted "
                                 "for v2 (chexquery) models; run `radreport fit-safety`"))
    reference = (phantom_reference(fit.reference, info.image_size) if root is None
                 else dataset_reference(kind, root, fit.reference, info.image_size))
    write_reference(folder, reference)
    records.append(FitRecord(REFERENCE_FILE, f"train split: {reference['source']}, "
                             f"{reference['studies']} studies"))
    return records


def _dataset_root(kind: str, data: dict[str, Any]) -> Path | None:
    """None for phantoms; the real dataset's folder, which must still be there."""
    if kind == "phantoms":
        return None
    root = Path(str(data.get("root", "")))
    if not data.get("root") or not root.is_dir():
        raise DatasetMissing(f"the run's {kind} folder (data.root) is not here: pass --data-root "
                         "to fit on it, or --no-fit")
    return root


def _fit_safety(folder: Path, kind: str, root: Path | None, fit: FitOptions,
                variant: Variant) -> FitRecord:
    from radreport.model.fit_safety import fit_safety
    from radreport.model.fit_safety_data import fit_safety_on_dataset

    skipped = ""
    if root is None:
        result = fit_safety(folder, fit.validate, fit.train, fit.workers,
                            fit.critical_sensitivity, max_review_rate=fit.max_review_rate,
                            ood_flag_rate=fit.ood_flag_rate, variant=variant)
        source = "benchmark phantom"
    else:
        fitted = fit_safety_on_dataset(folder, kind, root, fit.validate, fit.train,
                                       fit.critical_sensitivity,
                                       max_review_rate=fit.max_review_rate,
                                       ood_flag_rate=fit.ood_flag_rate, variant=variant)
        result, source = fitted.fit, kind
        skipped = f"; {fitted.unreadable} unreadable images skipped"
    return FitRecord(
        variant_calibration_file(folder, variant).name,
        f"{variant} outputs; temperatures, thresholds and uncertain bands on the {source} "
        f"validate split ({len(result.validate.labels)} studies), the OOD gate's mean and "
        f"covariance on the {source} train split ({result.train_count} studies) and its "
        f"threshold on the validate split{skipped}")


def training_data(data: dict[str, Any]) -> TrainingData:
    """The run's dataset, split sizes and label policy, from its ``train_config['data']``."""
    kind = str(data.get("dataset", "phantoms"))
    if kind == "phantoms":
        from radreport.model.data import DataConfig

        defaults = {"train": DataConfig.train_seeds, "validate": DataConfig.validate_seeds}
        sizes = {split: int(data.get(f"{split}_seeds", seeds)[1])
                 for split, seeds in defaults.items()}
        return TrainingData(kind, sizes, PHANTOM_POLICY)
    from radreport.model.records import LABEL_POLICY, SOURCES, split_records

    root, cap = Path(str(data.get("root", ""))), int(data.get("max_studies", 0)) or None
    sizes = {}
    if root.is_dir():
        sizes = {split: sum(1 for _ in islice(split_records(kind, root, split), cap))
                 for split in ("train", "validate")}
    return TrainingData(kind, sizes, f"{SOURCES[kind]}; {LABEL_POLICY}")

"""Measure the fine detection head on the validate split (never test).

For each label of the head, on validate studies rendered as ``radreport evaluate`` renders
them and preprocessed as served: the label head's logit (the shipped model, read back from
its graphs), the fine head's study logit, and a logistic combination of both fitted on the
first half and scored on the second. Reported per system: AUROC, the specificity at the
threshold keeping 98% of positives, and the best F1 (both on the scoring half).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from radreport.data.benchmark import benchmark_split
from radreport.data.labels import POSITIVE
from radreport.eval.evaluate import render_cases
from radreport.model.fine_findings import load_head, rows_of
from radreport.model.fine_grounding import frozen_encoder, frozen_inputs
from radreport.model.onnx_weights import recover_model
from radreport.model.report import to_model_input


def logits(model_dir: Path, head_dir: Path, count: int, chunk: int = 25,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(label-head logits (n, K), fine-head logits (n, K), truth (n, K), labels)."""
    model = recover_model(model_dir)
    encoder = frozen_encoder(model)
    head = load_head(head_dir)
    labels = head.cfg.labels
    rows = rows_of(labels)
    size = model.config.image_size
    base, fine, truth = [], [], []
    began = time.perf_counter()
    seeds = benchmark_split("validate").seeds[:count]
    for start in range(0, len(seeds), chunk):
        cases = render_cases(seeds[start : start + chunk])
        images = torch.from_numpy(np.stack([to_model_input(c.image, size)[0]
                                            for c in cases])[:, None])
        with torch.no_grad():
            out = encoder(images)
            _, study = head(images, frozen_inputs(encoder, images))
        base.append(out.label_logits[:, rows].numpy())
        fine.append(study.numpy())
        truth.append(np.array([[c.labels[row] == POSITIVE for row in rows] for c in cases]))
        print(f"validate {start + len(cases)}/{len(seeds)} "
              f"{time.perf_counter() - began:.0f}s", flush=True)
    return np.concatenate(base), np.concatenate(fine), np.concatenate(truth), labels


def spec_at_sensitivity(scores: np.ndarray, truth: np.ndarray, sensitivity: float) -> float:
    positives = np.sort(scores[truth])
    cut = positives[int(np.floor((1 - sensitivity) * len(positives)))]
    return float((scores[~truth] < cut).mean())


def best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    return max(float(f1_score(truth, scores >= t)) for t in np.unique(scores))


def run_measurement(model_dir: Path, head_dir: Path, count: int = 1000) -> str:
    base, fine, truth, labels = logits(model_dir, head_dir, count)
    half = len(truth) // 2
    lines = [f"validate studies {half}-{len(truth) - 1} (combination fitted on 0-{half - 1})",
             f"{'label':<14}{'system':<14}{'AUROC':>8}{'spec@sens0.98':>15}{'best F1':>9}"]
    for k, name in enumerate(labels):
        y = truth[:, k].astype(bool)
        features = np.stack([base[:, k], fine[:, k]], axis=1)
        combo = LogisticRegression(C=10.0).fit(features[:half], y[:half])
        systems = {"label head": base[:, k], "fine head": fine[:, k],
                   "combined": combo.decision_function(features)}
        for system, scores in systems.items():
            s, t = scores[half:], y[half:]
            lines.append(f"{name:<14}{system:<14}{roc_auc_score(t, s):>8.4f}"
                         f"{spec_at_sensitivity(s, t, 0.98):>15.3f}{best_f1(s, t):>9.3f}")
        lines.append(f"{'':<14}combination weights {combo.coef_[0].round(3).tolist()} "
                     f"bias {combo.intercept_[0]:.3f}; positives {int(y[half:].sum())}")
    text = "\n".join(lines)
    print(text, flush=True)
    (head_dir / "measurement.txt").write_text(text + "\n")
    return text


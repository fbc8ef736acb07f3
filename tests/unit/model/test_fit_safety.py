"""``radreport fit-safety`` on a tiny v2 folder: per-variant files, read back by variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from radreport.model.config import ModelConfig
from radreport.model.export import write_model_folder
from radreport.model.fit_safety import fit_safety
from radreport.model.model import RadReportModel
from radreport.model.prompt import PROMPT_LEN
from radreport.model.report import CALIBRATION_FILE, ReportGenerator, calibration_file
from radreport.model.tokenizer import ReportTokenizer


def test_each_variant_gets_its_own_safety_net(tokenizer: ReportTokenizer,
                                              tmp_path: Path) -> None:
    config = ModelConfig(vocab_size=tokenizer.vocab_size, arch="chexquery", image_size=64,
                         patch=16, conv_channels=(4, 8, 8, 16, 16), enc_width=16,
                         enc_heads=2, query_layers=1, dec_depth=1, dec_width=16, dec_heads=2,
                         prompt_len=PROMPT_LEN, max_len=PROMPT_LEN + 150)
    torch.manual_seed(0)
    tokenizer.save(tmp_path / "tokenizer.json")
    folder = tmp_path / "m"
    write_model_folder(RadReportModel(config).eval().checkpoint(), tmp_path / "tokenizer.json",
                       folder, "v", "0", variants=["int8"])
    assert calibration_file(folder, "int8") == folder / CALIBRATION_FILE  # none of its own
    fit = fit_safety(folder, validate_count=60, train_count=60, variant="int8")
    assert fit.path == folder / "calibration.int8.json" and fit.path.is_file()
    assert not (folder / CALIBRATION_FILE).exists()  # FP32's is not touched
    int8, fp32 = ReportGenerator(folder, "int8"), ReportGenerator(folder)
    assert int8.safety_net.ood is not None and fp32.safety_net.ood is None
    assert int8.safety_net.ood.threshold == fit.net.ood.threshold  # type: ignore[union-attr]
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    assert int8.generate([image])[0].safety.ood_score is not None  # type: ignore[union-attr]

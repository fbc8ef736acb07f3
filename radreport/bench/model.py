"""How fast the shipped model drafts one report on this machine's CPU, without torch.

Times ``ReportGenerator`` end to end (letterbox preprocessing, encoder, greedy decoding,
sentence maps and boxes) one study at a time, as a single request would see it, at the
benchmark size and at 2048 px (the largest input we accept), and a batch of 8, per
precision variant. Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radreport.data.phantoms.generator import generate_study
from radreport.model.report import (
    DEFAULT_MODEL_DIR,
    VARIANTS,
    ReportGenerator,
    Variant,
    model_files,
)


def time_calls(generator: ReportGenerator, images: Sequence[np.ndarray], repeats: int,
               ) -> list[float]:
    """Milliseconds of ``repeats`` calls, each drafting ``images`` as one batch."""
    generator.generate(images)  # warm-up: ONNX Runtime plans memory on the first run
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generator.generate(images)
        times.append(1000 * (time.perf_counter() - start))
    return times


def run(model_dir: Path = DEFAULT_MODEL_DIR, variants: Sequence[Variant] = VARIANTS,
        repeats: int = 20, threads: int | None = None) -> list[str]:
    """One line per (variant, input) with median and p90 milliseconds."""
    small = [generate_study(5_100_000 + i, 512).image for i in range(8)]
    large = [generate_study(5_100_000, 2048).image]
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; model {model_dir}; "
             f"threads {threads or 'ORT default'}"]
    for variant in variants:
        if not all(path.is_file() for path in model_files(model_dir, variant)):
            lines.append(f"  {variant:5s} not in this model folder")
            continue
        generator = ReportGenerator(model_dir, variant, threads=threads)
        for label, images in (("1 study, 512 px", small[:1]), ("1 study, 2048 px", large),
                              ("batch of 8, 512 px", small)):
            times = sorted(time_calls(generator, images, repeats))
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
            lines.append(f"  {variant:5s} {label:20s} median {statistics.median(times):7.1f} ms"
                         f"  p90 {p90:7.1f} ms  ({statistics.median(times) / len(images):.1f}"
                         " ms/report)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"peak resident memory of this process: {peak_mb:.0f} MB")
    return lines

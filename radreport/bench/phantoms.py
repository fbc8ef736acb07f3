"""How long phantoms take: generation alone, and generation plus writing PNG and masks.

The issue's goal is 1,000 studies at 512 px in under a minute on one core; this measures
on one process (one core) and prints the figures, it asserts nothing.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from radreport.data.phantoms.export import export_studies
from radreport.data.phantoms.generator import generate_study


def run(count: int = 1000, size: int = 512, first_seed: int = 5_000_000) -> dict[str, float]:
    """Time ``count`` studies; returns seconds for generation and for a full export."""
    seeds = range(first_seed, first_seed + count)
    start = time.perf_counter()
    for seed in seeds:
        generate_study(seed, size)
    generate_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_studies(seeds, size, Path(tmp), workers=1)
        export_s = time.perf_counter() - start
    return {"count": count, "size": size, "generate_s": generate_s, "export_s": export_s}


def report(result: dict[str, float]) -> str:
    count = result["count"]
    return "\n".join([
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(measured on one process)",
        f"{int(count)} phantoms at {int(result['size'])} px",
        f"  generate only:           {result['generate_s']:7.1f} s  "
        f"({1000 * result['generate_s'] / count:.1f} ms/study)",
        f"  generate + PNG + masks:  {result['export_s']:7.1f} s  "
        f"({1000 * result['export_s'] / count:.1f} ms/study)",
        f"  goal: 1,000 in under 60 s -> generation "
        f"{'meets' if result['generate_s'] * 1000 / count < 60 else 'misses'} it",
    ])

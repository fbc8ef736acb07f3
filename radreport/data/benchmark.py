"""The fixed benchmark split every evaluation uses: sizes, seeds and resolution, written down.

It is generated on demand (``radreport phantoms --benchmark --out DIR``), never committed.
Seed ranges are disjoint, and every phantom is its own synthetic patient, so the split is
patient-level by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int
    first_seed: int

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.count)


BENCHMARK_SIZE_PX: Final = 512
BENCHMARK_SPLITS: Final[tuple[SplitSpec, ...]] = (
    SplitSpec("train", 20_000, 0),
    SplitSpec("validate", 1_000, 1_000_000),
    SplitSpec("test", 1_000, 2_000_000),
)


def benchmark_split(name: str) -> SplitSpec:
    for spec in BENCHMARK_SPLITS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown split {name!r}; choose from "
                     f"{', '.join(s.name for s in BENCHMARK_SPLITS)}")

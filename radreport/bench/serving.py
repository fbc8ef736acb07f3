"""Side by side, in one run on one machine: the ways of turning an image into a report.

(a) PyTorch eager, recomputing the whole prefix each token (no KV cache), (b) PyTorch eager
with the KV cache, (c) ONNX Runtime called directly (``ReportGenerator``), and (d) a real
tritonserver with 1, 4, 8 and 16 concurrent clients, once with dynamic batching and once
without, plus the BLS design (a Triton request per decoder step) at one client. Every path
drafts the same phantom studies; greedy token ids are compared with (c)
and the agreement is printed. Figures only, no assertions. (a) and (b) need the ``train``
extra (torch); they are skipped with a note when torch is missing.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radreport.data.phantoms.generator import generate_study
from radreport.model.report import DEFAULT_MODEL_DIR, ReportGenerator, to_model_input
from radreport.serving.client import REPORT_MODEL, ReportClient
from radreport.serving.tritonserver import DEFAULT_REPOSITORY, TritonServer


@dataclass
class Figures:
    name: str
    latencies_ms: list[float]
    wall_s: float
    reports: int
    agreement: float | None = None  # share of studies whose token ids equal ONNX Runtime's

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        agree = "" if self.agreement is None else f"  same tokens as (c): {self.agreement:.0%}"
        return (f"  {self.name:38s} p50 {statistics.median(lat):7.1f} ms  p95 {p95:7.1f} ms  "
                f"{self.reports / self.wall_s:6.1f} reports/s{agree}")


def inputs(count: int, size: int) -> np.ndarray:
    """``count`` phantom studies as ``size`` px model inputs (B, 1, size, size)."""
    return np.stack([to_model_input(generate_study(6_000_000 + i, 512).image, size)[0]
                     for i in range(count)])[:, None]


def sequential(name: str, run: Callable[[np.ndarray], list[int]], images: np.ndarray,
               expected: Sequence[list[int]] | None) -> Figures:
    run(images[:1])  # warm-up
    latencies, same = [], 0
    start = time.perf_counter()
    for i in range(len(images)):
        t0 = time.perf_counter()
        tokens = run(images[i : i + 1])
        latencies.append(1000 * (time.perf_counter() - t0))
        same += expected is not None and tokens == expected[i]
    wall = time.perf_counter() - start
    return Figures(name, latencies, wall, len(images),
                   None if expected is None else same / len(images))


def torch_paths(images: np.ndarray, expected: Sequence[list[int]],
                checkpoint: Path | None) -> list[Figures]:
    try:
        import torch

        from radreport.model.decode import greedy_decode, greedy_decode_reference
        from radreport.model.model import RadReportModel
    except ImportError:
        return []
    if checkpoint is None or not checkpoint.is_file():
        return []
    model = RadReportModel.from_checkpoint(torch.load(checkpoint, map_location="cpu",
                                                      weights_only=True)).eval()
    eos = model.config.eos_id

    def tokens(decode: Callable[..., object]) -> Callable[[np.ndarray], list[int]]:
        def run(batch: np.ndarray) -> list[int]:
            out = decode(model, torch.from_numpy(batch))
            ids = out.tokens[0].tolist()  # type: ignore[attr-defined]
            return ids[: ids.index(eos)] if eos in ids else ids
        return run

    return [sequential("(a) PyTorch, no KV cache", tokens(greedy_decode_reference), images,
                       expected),
            sequential("(b) PyTorch, KV cache", tokens(greedy_decode), images, expected)]


def concurrent(name: str, url: str, images: np.ndarray, clients: int,
               expected: Sequence[list[int]], model: str = REPORT_MODEL) -> Figures:
    """``clients`` threads, each with its own connection, share the studies between them."""
    connections = [ReportClient(url, model=model) for _ in range(clients)]
    connections[0].generate(images[:1])  # warm-up

    def one(i: int) -> tuple[float, bool]:
        t0 = time.perf_counter()
        report = connections[i % clients].generate(images[i : i + 1])[0]
        return 1000 * (time.perf_counter() - t0), report["token_ids"] == expected[i]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(len(images))))
    wall = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return Figures(name, [r[0] for r in results], wall, len(images),
                   sum(r[1] for r in results) / len(images))


def repository_without_batching(tmp: Path) -> Path:
    """A copy of the repository whose report model has no dynamic_batching block."""
    copy = tmp / "repository"
    shutil.copytree(DEFAULT_REPOSITORY, copy)
    config = copy / "radreport_report" / "config.pbtxt"
    text = config.read_text()
    start = text.index("dynamic_batching {")
    end = text.index("\n}\n", start) + 3
    config.write_text(text[:start] + text[end:])
    return copy


def run(count: int = 32, checkpoint: Path | None = None) -> list[str]:
    generator = ReportGenerator(DEFAULT_MODEL_DIR)
    images = inputs(count, generator.info.image_size)
    expected = [d.token_ids for d in generator.generate_prepared(images)]
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; {count} phantom studies, "
             f"greedy, model {generator.info.model_version}"]
    figures = torch_paths(images, expected, checkpoint)
    if not figures:
        lines.append("  (a), (b): skipped (needs torch and --checkpoint)")
    figures.append(sequential("(c) ONNX Runtime in process",
                              lambda b: generator.generate_prepared(b)[0].token_ids,
                              images, expected))
    with tempfile.TemporaryDirectory() as tmp:
        for label, repository in (("batching", DEFAULT_REPOSITORY),
                                  ("no batching", repository_without_batching(Path(tmp)))):
            with TritonServer(repository=repository) as server:
                for clients in (1, 4, 8, 16):
                    figures.append(concurrent(f"(d) Triton, {clients:2d} clients, {label}",
                                              server.grpc_url, images, clients, expected))
                if label == "batching":
                    figures.append(concurrent("(d) Triton, BLS call per step, 1 client",
                                              server.grpc_url, images, 1, expected,
                                              model="radreport_report_bls"))
    return lines + [f.line() for f in figures]

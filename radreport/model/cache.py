"""Training studies rendered once into memory-mapped files on disk, and read back as examples.

Rendering a phantom costs tens of milliseconds and 20,000 of them do not fit in memory as
float tensors, so each study is rendered once into fixed-size records (uint16 image, uint8
masks on the patch grid, int16 token ids) in ``numpy.memmap`` files; epochs then read only
what a batch needs, and the page cache does the rest. Rendering is resumable: a study is
marked done only after its record is written, so an interrupted render carries on.

A record keeps what the prompt needs (labels, sex, age, indication) rather than the
prompt itself, so the context can be dropped at random per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from radreport.data.labels import CHEXPERT_LABELS, POSITIVE
from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import PhantomStudy
from radreport.model.chexquery import ANATOMY_QUERIES
from radreport.model.config import ModelConfig
from radreport.model.data import area_downsample, is_content_word, report_pieces
from radreport.model.prompt import INDICATION_WORDS, ClinicalContext
from radreport.model.tokenizer import ReportTokenizer

MAX_SENTENCES = 24
ANATOMY_MASKS: dict[str, str] = {"cardiac": "heart", "left lung": "lung_left",
                                 "right lung": "lung_right", "mediastinum": "mediastinum"}
Example = dict[str, Tensor]


@dataclass(frozen=True)
class RecordSpec:
    """Shapes of one record; part of the cache key."""

    image_size: int
    grid: int
    report_len: int  # report ids incl. BOS/EOS, padded
    n_queries: int

    def fields(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        n = self.grid * self.grid
        return {
            "image": ("uint16", (self.image_size, self.image_size)),
            "ids": ("int16", (self.report_len,)),
            "sentence": ("int8", (self.report_len,)),  # sentence index per id, -1 none
            "ground": ("bool", (self.report_len,)),  # content word of a sentence with a region
            "sentence_masks": ("uint8", (MAX_SENTENCES, n)),
            "labels": ("uint8", (len(CHEXPERT_LABELS),)),
            "query_masks": ("uint8", (self.n_queries, n)),
            "sex": ("uint8", ()),  # 0 F, 1 M
            "age": ("uint8", ()),
            "indication": ("int16", (INDICATION_WORDS,)),
        }


def spec_for(config: ModelConfig) -> RecordSpec:
    return RecordSpec(config.image_size, config.grid, config.max_len + 1 - config.prompt_len,
                      config.n_labels + config.n_anatomy_queries)


def _grid_u8(mask: np.ndarray, grid: int) -> np.ndarray:
    frac = area_downsample(mask, grid).flatten().numpy()
    return np.round(frac * 255).astype(np.uint8)


def render_record(study: PhantomStudy, tokenizer: ReportTokenizer,
                  spec: RecordSpec) -> dict[str, np.ndarray]:
    """One study as a record: everything an example needs, at the model's resolution."""
    ids = [tokenizer.bos_id]
    sentence, ground = [-1], [False]
    masks: list[np.ndarray] = []
    for text, s in report_pieces(study):
        piece = tokenizer.encode_plain(text)
        index = -1
        if s is not None and s.mask.any() and len(masks) < MAX_SENTENCES:
            index = len(masks)
            masks.append(_grid_u8(s.mask, spec.grid))
        ids += piece
        sentence += [index] * len(piece)
        ground += [index >= 0 and is_content_word(tokenizer.id_to_token(i)) for i in piece]
    ids.append(tokenizer.eos_id)
    sentence.append(-1)
    ground.append(False)
    n = spec.grid * spec.grid
    pad = max(0, spec.report_len - len(ids))
    sentence_masks = np.zeros((MAX_SENTENCES, n), np.uint8)
    if masks:
        sentence_masks[: len(masks)] = np.stack(masks)
    labels = [study.labels[name] == POSITIVE for name in CHEXPERT_LABELS]
    indication = tokenizer.encode_plain(study.clinical_indication)[:INDICATION_WORDS]
    image = area_downsample(study.image, spec.image_size).numpy()
    return {
        "image": np.round(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16),
        "ids": np.array((ids + [tokenizer.pad_id] * pad)[: spec.report_len], np.int16),
        "sentence": np.array((sentence + [-1] * pad)[: spec.report_len], np.int8),
        "ground": np.array((ground + [False] * pad)[: spec.report_len], bool),
        "sentence_masks": sentence_masks,
        "labels": np.array(labels, np.uint8),
        "query_masks": _query_masks(study, spec),
        "sex": np.array(int(study.patient.sex == "M"), np.uint8),
        "age": np.array(study.patient.age_years, np.uint8),
        "indication": np.array(indication + [tokenizer.pad_id] * (INDICATION_WORDS
                                                                  - len(indication)), np.int16),
    }


def _query_masks(study: PhantomStudy, spec: RecordSpec) -> np.ndarray:
    """Per condition query the union of its findings' masks; per anatomy query its organ."""
    n = spec.grid * spec.grid
    out = np.zeros((spec.n_queries, n), np.uint8)
    for i, name in enumerate(CHEXPERT_LABELS):
        masks = [f.mask for f in study.findings if name in f.labels]
        if masks:
            out[i] = _grid_u8(np.logical_or.reduce(masks), spec.grid)
    base = len(CHEXPERT_LABELS)
    for j, query in enumerate(ANATOMY_QUERIES[: spec.n_queries - base]):
        organ = ANATOMY_MASKS.get(query)
        if organ is not None and organ in study.anatomy:
            out[base + j] = _grid_u8(study.anatomy[organ], spec.grid)
    return out


class StudyCache:
    """Records of ``seeds`` in memmaps under ``root``; ``build`` renders the missing ones."""

    def __init__(self, root: Path, seeds: Sequence[int], spec: RecordSpec, study_size: int,
                 tokenizer_hash: str) -> None:
        self.seeds, self.spec, self.study_size = list(seeds), spec, study_size
        key = json.dumps({"seeds": [self.seeds[0], len(self.seeds)], "spec": spec.__dict__,
                          "study_size": study_size, "tokenizer": tokenizer_hash},
                         sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(key)
        self.arrays = {name: self._open(name, dtype, shape)
                       for name, (dtype, shape) in spec.fields().items()}
        self.done = self._open("done", "bool", ())

    def __len__(self) -> int:
        return len(self.seeds)

    def record(self, index: int) -> dict[str, np.ndarray]:
        if not self.done[index]:
            raise RuntimeError(f"study {self.seeds[index]} is not rendered; call build()")
        return {name: arr[index] for name, arr in self.arrays.items()}

    def _open(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.memmap[Any, Any]:
        path = self.dir / f"{name}.npy"
        full = (len(self.seeds), *shape)
        if path.exists():
            arr = np.lib.format.open_memmap(path, mode="r+")
            if arr.shape != full or arr.dtype != np.dtype(dtype):
                raise ValueError(f"{path} has shape {arr.shape} {arr.dtype}, expected {full}")
            return arr
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=full)

    def build(self, tokenizer: ReportTokenizer, workers: int, progress: bool,
              desc: str) -> None:
        todo = [i for i in range(len(self.seeds)) if not self.done[i]]
        if not todo:
            return
        bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)
        for start in range(0, len(todo), 512):
            chunk = todo[start : start + 512]
            for i, record in zip(chunk, self._render(chunk, tokenizer, workers), strict=True):
                for name, value in record.items():
                    self.arrays[name][i] = value
                bar.update(1)
            for arr in self.arrays.values():
                arr.flush()
            self.done[chunk] = True  # only after the records are on disk
            self.done.flush()
        bar.close()

    def _render(self, indices: list[int], tokenizer: ReportTokenizer,
                workers: int) -> Iterator[dict[str, np.ndarray]]:
        jobs = [(self.seeds[i], self.study_size, tokenizer, self.spec) for i in indices]
        if workers <= 1:
            yield from (_render_job(job) for job in jobs)
            return
        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(_render_job, jobs, chunksize=8)


class LiveRecords:
    """Records rendered on demand (no cache): slow, for tiny runs and tests."""

    def __init__(self, seeds: Sequence[int], spec: RecordSpec, study_size: int,
                 tokenizer: ReportTokenizer) -> None:
        self.seeds, self.spec, self.study_size, self.tokenizer = (list(seeds), spec,
                                                                  study_size, tokenizer)

    def __len__(self) -> int:
        return len(self.seeds)

    def record(self, index: int) -> dict[str, np.ndarray]:
        return _render_job((self.seeds[index], self.study_size, self.tokenizer, self.spec))


class RecordSource(Protocol):
    """Records by index: ``StudyCache``, ``LiveRecords``, ``records.DiskRecords``."""

    def __len__(self) -> int: ...

    def record(self, index: int) -> dict[str, np.ndarray]: ...


def _render_job(job: tuple[int, int, ReportTokenizer, RecordSpec]) -> dict[str, np.ndarray]:
    seed, size, tokenizer, spec = job
    torch.set_num_threads(1)
    return render_record(generate_study(seed, size), tokenizer, spec)


def file_hash(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ExampleOptions:
    context_dropout: float = 0.5  # chance of dropping each of indication and age/sex
    augment: float = 0.0  # intensity augmentation strength (gamma, noise); no flips
    geometry: float = 0.0  # rotation/scale/shift strength, real datasets only; no flips


class RecordDataset(Dataset[Example]):
    """Examples from records, keyed like ``RadReportModel.forward``'s arguments.

    Randomness (context dropout, augmentation) comes from a generator seeded by
    ``(seed, epoch, index)``, so a resumed run sees the same examples.
    """

    def __init__(self, records: RecordSource, tokenizer: ReportTokenizer, config: ModelConfig,
                 options: ExampleOptions, seed: int = 0, train: bool = True) -> None:
        self.records, self.tokenizer, self.config = records, tokenizer, config
        self.options, self.seed, self.train, self.epoch = options, seed, train, 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        a = self.records.record(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return make_record_example(a, self.tokenizer, self.config, rng,
                                   self.options if self.train else ExampleOptions(0.0, 0.0))

    def unreadable(self) -> int:
        """Images found unreadable and skipped (streamed datasets; rendered ones have none)."""
        return 0


def make_record_example(a: dict[str, np.ndarray], tokenizer: ReportTokenizer,
                        config: ModelConfig, rng: np.random.Generator,
                        options: ExampleOptions) -> Example:
    p = config.prompt_len
    prompt: list[int] = []
    if p:
        sex, age = int(a["sex"]), int(a["age"])  # 2 and 255: unknown (real datasets)
        context = ClinicalContext(
            indication=None if rng.random() < options.context_dropout else "x",
            age_years=None if rng.random() < options.context_dropout or age == 255 else age,
            sex=None if rng.random() < options.context_dropout or sex > 1 else "FM"[sex])
        prompt = tokenizer.encode_prompt(a["labels"].astype(bool).tolist(), context)
        if context.indication is not None:  # the stored indication ids, not "x"
            start = len(CHEXPERT_LABELS) + 2
            prompt[start:] = a["indication"].astype(np.int64).tolist()
    seq = torch.tensor(prompt + a["ids"].astype(np.int64).tolist())  # (max_len + 1,)
    tokens, targets = seq[:-1], seq[1:].clone()
    if p:
        targets[:p] = tokenizer.pad_id  # prompt and BOS are given, never predicted
    targets[targets == tokenizer.unk_id] = tokenizer.pad_id  # never taught to write [UNK]
    sentence = torch.from_numpy(a["sentence"].astype(np.int64))
    ground = torch.from_numpy(a["ground"].copy())
    masks = torch.from_numpy(a["sentence_masks"].astype(np.float32) / 255.0)
    n = masks.size(1)
    region = torch.zeros(seq.numel(), n)
    has = sentence >= 0
    region[p:][has] = masks[sentence[has]]
    finding = torch.zeros(seq.numel(), dtype=torch.bool)
    finding[p:] = ground
    image = torch.from_numpy(a["image"].astype(np.float32) / 65535.0)
    if options.augment > 0:
        image = _augment(image, options.augment, rng)
    labels = torch.from_numpy(a["labels"].astype(np.float32))
    query_masks = torch.from_numpy(a["query_masks"].astype(np.float32) / 255.0)
    weight = torch.ones(query_masks.size(0))
    weight[: len(CHEXPERT_LABELS)] = labels  # a condition query is supervised when present
    return {"images": image[None], "tokens": tokens, "targets": targets,
            "region_masks": region[1:], "finding_token_mask": finding[1:],
            "label_targets": labels, "query_masks": query_masks, "query_weight": weight}


def _augment(image: Tensor, strength: float, rng: np.random.Generator) -> Tensor:
    """Exposure-like changes only: gamma, contrast, a little noise. Never a flip."""
    gamma = float(np.exp(rng.uniform(-0.25, 0.25) * strength))
    contrast = float(1.0 + rng.uniform(-0.1, 0.1) * strength)
    out = image.clamp(0, 1) ** gamma
    out = (out - 0.5) * contrast + 0.5
    noise = torch.from_numpy(rng.normal(0.0, 0.01 * strength, image.shape).astype(np.float32))
    return (out + noise).clamp(0.0, 1.0)


class PhantomReportDataset(RecordDataset):
    """Phantom studies rendered on demand, without randomness: tests and tiny runs."""

    def __init__(self, seeds: Sequence[int], tokenizer: ReportTokenizer, config: ModelConfig,
                 study_size: int = 256) -> None:
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer vocab_size {tokenizer.vocab_size} exceeds "
                             f"config.vocab_size {config.vocab_size}")
        if study_size < config.image_size:
            raise ValueError(f"study_size {study_size} is smaller than "
                             f"config.image_size {config.image_size}")
        super().__init__(LiveRecords(seeds, spec_for(config), study_size, tokenizer),
                         tokenizer, config, ExampleOptions(0.0, 0.0), train=False)

"""A model trained on the MIMIC-CXR-JPG layout, served by a real tritonserver (issue 18,
"Tokenizer"): the backend writes with the tokenizer the model folder ships, not the
phantom one, through the whole-report and the streaming models alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from typer.testing import CliRunner

from radreport.cli import app
from radreport.model.onnx_runtime import PROMPT_IDS
from radreport.model.prompt import PROMPT_TOKENS
from radreport.model.report import DEFAULT_MODEL_DIR, ModelInfo, ReportGenerator, to_model_input
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import load_config, train
from radreport.serving.client import REPORT_MODEL, STREAM_MODEL, ReportClient
from radreport.serving.repository import layout, parse_config, report_io_problems
from radreport.serving.tritonserver import PROJECT_ROOT, TritonServer

pytestmark = pytest.mark.integration
MIMIC = PROJECT_ROOT / "tests" / "fixtures" / "datasets" / "mimic-cxr-jpg"
TINY = PROJECT_ROOT / "radreport" / "model" / "configs" / "tiny.toml"
# tests/unit/model/test_real_data.py's tiny v2 model, trained long enough on the fixture's
# three train studies (about 20 s here) to write words rather than one repeated token.
TINY_V2 = ('model.arch="chexquery"', "model.patch=16", "model.conv_channels=[4, 8, 8, 16, 16]",
           "model.enc_width=16", "model.enc_heads=2", "model.query_layers=1",
           "model.dec_depth=2", "model.dec_width=32", "model.dec_heads=2",
           "model.prompt_len=28", "model.max_len=178", "train.batch_size=2",
           "train.track=false", "train.bn_batches=2", "train.epochs=40", "train.lr=1e-2",
           'data.dataset="mimic-cxr-jpg"', f'data.root="{MIMIC}"', "data.num_workers=0")
# Words of the fixture's MIMIC-CXR reports that no phantom report uses.
MIMIC_ONLY = {"degenerative", "treatment", "spine", "nasogastric"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained on the fixture and exported with ``radreport export``."""
    run, out = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("model") / "mimic"
    train(load_config(TINY, list(TINY_V2)), run, progress=False)
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(run / "best.pt"),
                                      "--out", str(out), "--name", "mimic-fixture"])
    assert result.exit_code == 0, result.output
    return out


def point_at(config_path: Path, folder: Path) -> None:
    """A report model's config serving ``folder``: its ``model_dir`` parameter and its image
    input at the folder's size (the shipped configs name 512 px; this model is 64 px)."""
    config = parse_config(config_path)
    size = ModelInfo.load(folder / "model.json").image_size
    image = next(t for t in config.input if t.name == "image")
    image.dims[:] = [1, size, size]
    config.parameters["model_dir"].string_value = str(folder)
    assert report_io_problems(config, ModelInfo.load(folder / "model.json")) == []
    config_path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The CPU repository as ``radreport triton-repo --out`` lays it out, its two report
    models pointed at the folder; the process keeps no RADREPORT_MODEL_DIR of its own."""
    base = tmp_path_factory.mktemp("triton")
    repository = base / "repository"
    layout("cpu", repository)
    for model in (REPORT_MODEL, STREAM_MODEL):
        point_at(repository / model / "config.pbtxt", folder)
    with TritonServer(repository=repository, models=(REPORT_MODEL, STREAM_MODEL),
                      log_path=base / "tritonserver.log",
                      env={"RADREPORT_MODEL_DIR": ""}) as running:
        yield running


@pytest.fixture(scope="module")
def inputs(folder: Path) -> np.ndarray:
    """Three fixture radiographs as the folder's model inputs (3, 1, S, S)."""
    size = ModelInfo.load(folder / "model.json").image_size
    paths = sorted(MIMIC.glob("files/**/*.jpg"))[:3]
    return np.stack([to_model_input(np.asarray(Image.open(p), np.float32) / 255.0, size)[0]
                     for p in paths])[:, None]


@pytest.fixture(scope="module")
def reference(folder: Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """ReportGenerator in this process on the same folder."""
    generator = ReportGenerator(folder)
    return [generator.generate_prepared(inputs[i : i + 1])[0].to_dict()
            for i in range(len(inputs))]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def id_words(tokenizer: ReportTokenizer, ids: list[int]) -> list[str]:
    """The words that ``ids`` stand for under ``tokenizer``, section headers left out."""
    tokens = tokenizer.tokens(ids)
    return [t for i, t in enumerate(tokens) if t.isalpha()
            and not (t in ("findings", "impression") and tokens[i + 1 : i + 2] == [":"])]


def assert_same(served: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("text", "findings", "impression", "token_ids", "model_version"):
        assert served[key] == expected[key], key
    assert [(s["text"], s["section"]) for s in served["sentences"]] == [
        (s["text"], s["section"]) for s in expected["sentences"]]


def test_the_folders_tokenizer_is_not_the_phantom_one(folder: Path) -> None:
    tokenizer = ReportTokenizer.load(folder / "tokenizer.json")
    phantom = ReportTokenizer.load(DEFAULT_MODEL_DIR / "tokenizer.json")  # the shipped model's
    vocab, phantom_vocab = set(tokenizer._tok.get_vocab()), set(phantom._tok.get_vocab())
    assert vocab - phantom_vocab >= MIMIC_ONLY
    assert tokenizer.vocab_size != phantom.vocab_size
    shared = sorted(vocab & phantom_vocab - {"[PAD]", "[BOS]", "[EOS]", "[UNK]"})
    moved = [w for w in shared if tokenizer._tok.token_to_id(w) != phantom._tok.token_to_id(w)]
    assert len(moved) > len(shared) // 2  # the same word, mostly another id
    # the one layout every runtime relies on: the prompt's tokens right after the specials
    assert [tokenizer._tok.token_to_id(t) for t in PROMPT_TOKENS] == list(
        range(PROMPT_IDS.start, PROMPT_IDS.stop))


def test_served_reports_are_written_with_the_folders_tokenizer(
        server: TritonServer, folder: Path, inputs: np.ndarray,
        reference: list[dict[str, Any]]) -> None:
    tokenizer = ReportTokenizer.load(folder / "tokenizer.json")
    phantom = ReportTokenizer.load(DEFAULT_MODEL_DIR / "tokenizer.json")
    served = ReportClient(server.grpc_url).generate(inputs)
    assert len(served) == len(reference)
    for got, want in zip(served, reference, strict=True):
        assert_same(got, want)
        assert got["model_version"].startswith("mimic-fixture:")
        ids = got["token_ids"]
        assert ids and max(ids) < tokenizer.vocab_size
        assert "[UNK]" not in tokenizer.tokens(ids)
        # the ids decode with the folder's tokenizer to the served words, and to other ones
        # with the phantom tokenizer
        assert id_words(tokenizer, ids) == words(got["findings"] + " " + got["impression"])
        assert words(tokenizer.decode(ids)) != words(phantom.decode(ids))
        assert id_words(phantom, ids) != id_words(tokenizer, ids)


def test_the_streaming_model_streams_the_same_report(
        server: TritonServer, inputs: np.ndarray, reference: list[dict[str, Any]]) -> None:
    client = ReportClient(server.grpc_url, model=STREAM_MODEL)
    *sentences, report = client.generate_stream(inputs[:1])
    assert report["type"] == "report" and {s["type"] for s in sentences} <= {"sentence"}
    assert_same(report, reference[0])
    assert [s["text"] for s in sentences] == [s["text"] for s in reference[0]["sentences"]]

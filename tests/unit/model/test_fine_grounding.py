"""The fine grounding head: shapes, distributions, device rows, its training, the model
that carries it (export, read-back) and its measurement table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_v2

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.labeler import DEVICE_KINDS
from radreport.model.fine_grounding import (
    PHANTOM_DEVICES,
    CacheSpec,
    FineCache,
    TrainOptions,
    attach,
    fine_loss,
    frozen_encoder,
    frozen_inputs,
    head_config_for,
    load_head,
    query_weights,
    save_head,
    train_head,
    train_step,
)
from radreport.model.fine_grounding_eval import SYSTEMS, Scored, table
from radreport.model.fine_head import FineGroundingHead, coarse_prior
from radreport.model.query_grounding import MapTuning, SentenceGrounder

Q = 20  # condition and anatomy queries
D = len(DEVICE_KINDS)

SPEC = CacheSpec(count=2, image_size=64, study_size=256)  # seeds 0 and 1 of train


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FineCache:
    built = FineCache(tmp_path_factory.mktemp("fine"), SPEC)
    built.build()
    return built


def test_frozen_inputs_follow_the_encoder() -> None:
    model = tiny_v2()
    encoder = frozen_encoder(model)
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        inputs = frozen_inputs(encoder, images)
        expected = encoder(images).query_attn
    torch.testing.assert_close(inputs.coarse, expected)
    assert inputs.fine4.shape == (2, 8, 16, 16) and inputs.fine8.shape == (2, 8, 8, 8)
    assert inputs.queries.shape == (2, 20, 16)
    assert not any(p.requires_grad for p in model.parameters())


def test_head_maps_are_distributions_that_start_at_the_coarse_map() -> None:
    model = tiny_v2()
    inputs = frozen_inputs(frozen_encoder(model), torch.rand(3, 1, 64, 64))
    maps = FineGroundingHead(head_config_for(model))(inputs)
    assert maps.shape == (3, Q + D, 16 * 16)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, Q + D))
    up = coarse_prior(inputs.coarse, (16, 16)).exp()
    expected = up / up.sum(-1, keepdim=True)  # q and the device offsets start at zero
    torch.testing.assert_close(maps[:, :Q], expected)
    support = CHEXPERT_LABELS.index("Support Devices")
    for row in range(Q, Q + D):  # each device row starts as the Support Devices map
        torch.testing.assert_close(maps[:, row], expected[:, support])


def test_device_rows_learn_their_own_kind() -> None:
    """Two device rows, one supervised on the left half, one on the right, part ways."""
    model = tiny_v2()
    encoder = frozen_encoder(model)
    head = FineGroundingHead(head_config_for(model))
    images = torch.rand(2, 1, 64, 64)
    masks = torch.zeros(2, Q + D, 16, 16)
    masks[:, Q, :, :8] = 1.0
    masks[:, Q + 1, :, 8:] = 1.0
    weight = torch.zeros(2, Q + D)
    weight[:, Q : Q + 2] = 1.0
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1)
    for _ in range(30):
        train_step(encoder, head, optimizer, images, masks, weight)
    with torch.no_grad():
        maps = head(frozen_inputs(encoder, images)).reshape(2, Q + D, 16, 16)
    assert float(maps[:, Q, :, :8].sum(-1).sum(-1).min()) > 0.8
    assert float(maps[:, Q + 1, :, 8:].sum(-1).sum(-1).min()) > 0.8


def test_cache_masks_and_weights(cache: FineCache) -> None:
    images, masks, weight = cache.batch(np.array([1, 0]))
    assert images.shape == (2, 1, 64, 64) and 0 < float(images.mean()) < 1
    assert masks.shape == (2, Q + D, 16, 16) and float(masks.max()) <= 1.0
    labels = torch.from_numpy(cache.labels[:2].astype(np.float32))
    torch.testing.assert_close(weight[:, : len(CHEXPERT_LABELS)], labels)
    assert (weight[:, len(CHEXPERT_LABELS):] == 1).all()
    for i in range(2):  # a present finding has a region; the lungs always do
        for q in np.flatnonzero(cache.labels[i][1:]) + 1:
            assert masks[i, q].sum() > 0, CHEXPERT_LABELS[q]
        assert masks[i, len(CHEXPERT_LABELS) + 1].sum() > 0  # left lung



def test_device_masks_follow_the_study_devices(cache: FineCache) -> None:
    from radreport.data.benchmark import benchmark_split
    from radreport.data.phantoms.generator import generate_study

    seeds = benchmark_split("train").seeds
    _, masks, _ = cache.batch(np.arange(2))
    for i in range(2):
        kinds = {f.kind for f in generate_study(seeds[i], SPEC.study_size).findings}
        for kind, row in PHANTOM_DEVICES.items():
            assert (masks[i, Q + row].sum() > 0) == (kind in kinds), (i, kind)


def test_query_weights() -> None:
    weight = query_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 4)
    assert weight.tolist() == [[1, 0, 1, 1], [0, 1, 1, 1]]


def test_training_lowers_the_loss_and_leaves_the_model_alone(cache: FineCache) -> None:
    model = tiny_v2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = frozen_encoder(model)
    head = FineGroundingHead(head_config_for(model))
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-2)
    batch = cache.batch(np.arange(2))
    losses = [train_step(encoder, head, optimizer, *batch) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.05
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    with torch.no_grad():
        final = fine_loss(head(frozen_inputs(encoder, batch[0])), batch[1], batch[2])
    assert float(final) < losses[0]


def test_train_head_checkpoints_resumes_and_saves(cache: FineCache, tmp_path: Path) -> None:
    model = tiny_v2()
    encoder = frozen_encoder(model)
    head = FineGroundingHead(head_config_for(model))
    checkpoint = tmp_path / "checkpoint.pt"
    first = train_head(encoder, head, cache, TrainOptions(epochs=1, batch_size=2), checkpoint)
    assert len(first) == 1 and checkpoint.exists()
    resumed = FineGroundingHead(head_config_for(model))
    rest = train_head(encoder, resumed, cache, TrainOptions(epochs=2, batch_size=2), checkpoint)
    assert len(rest) == 1  # epoch 1 came from the checkpoint
    save_head(resumed, tmp_path / "head", {"note": "test"})
    loaded = load_head(tmp_path / "head")
    inputs = frozen_inputs(encoder, torch.rand(1, 1, 64, 64))
    torch.testing.assert_close(loaded(inputs), resumed.eval()(inputs))


def test_table_scores_a_fine_map_that_hits_a_thin_band() -> None:
    mask = np.zeros((64, 64), bool)
    mask[:, 17:20] = True  # a band 3 px wide: no 16-px cell centre (8, 24, ...) lies on it
    coarse = np.zeros((4, 4), np.float32)
    coarse[1, 1] = 1.0  # the peak cell overlaps the band, its centre (and x = 22, 26) miss it
    fine = np.zeros((16, 16), np.float32)
    fine[4, 4] = 1.0  # cell centre x = 18: on the band
    sample = Scored(0, "finding:Atelectasis", frozenset({"Atelectasis"}), coarse, coarse,
                    coarse, fine, mask)
    grounder = SentenceGrounder(tuple(CHEXPERT_LABELS), {"finding": MapTuning(1.0, 1.0)})
    rows = table([sample], grounder).splitlines()
    atelectasis = rows[2].split()
    assert atelectasis[:2] == ["Atelectasis", "1"] and len(atelectasis) == 2 + 2 * len(SYSTEMS)
    pointing = [float(v) for v in atelectasis[2::2]]
    assert pointing == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_a_model_with_the_head_exports_and_reads_back(tmp_path: Path) -> None:
    """``attach`` -> the encoder graph adds ``fine_query_maps`` (the head's maps), changes no
    other output, and ``onnx_weights`` reads every head weight back."""
    from radreport.model.export import FINE_QUERY_MAPS, export_onnx
    from radreport.model.onnx_runtime import OnnxReportModel
    from radreport.model.onnx_weights import load_weights
    from radreport.model.report import ModelInfo

    model = tiny_v2().eval()
    head = FineGroundingHead(head_config_for(model))
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    with_head = attach(model, head)
    assert with_head.config.fine_head and not model.config.fine_head
    export_onnx(model, tmp_path / "plain")
    export_onnx(with_head, tmp_path / "fine")
    ModelInfo("t", "0", 64, extra={"model_config": with_head.config.to_dict()}).save(
        tmp_path / "fine" / "model.json")
    images = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    plain = OnnxReportModel(tmp_path / "plain" / "encoder.onnx",
                            tmp_path / "plain" / "decoder_step.onnx").encode(images)
    fine = OnnxReportModel(tmp_path / "fine" / "encoder.onnx",
                           tmp_path / "fine" / "decoder_step.onnx").encode(images)
    assert plain.fine_query_maps is None and fine.fine_query_maps is not None
    with torch.no_grad():
        expected = head(frozen_inputs(frozen_encoder(model), torch.from_numpy(images)))
    np.testing.assert_allclose(fine.fine_query_maps, expected.numpy(), atol=1e-5)
    for name in ("memory_kv", "label_probs", "features", "query_maps"):
        np.testing.assert_array_equal(getattr(fine, name), getattr(plain, name), err_msg=name)
    _, state = load_weights(tmp_path / "fine")
    for key, value in head.state_dict().items():
        torch.testing.assert_close(state[f"fine_head.{key}"], value, msg=key)
    assert FINE_QUERY_MAPS == "fine_query_maps"


def test_package_adds_the_head_and_keeps_every_other_output(tmp_path: Path) -> None:
    """``package_folder`` (how 0.3.0 and 0.4.0 were made): the folder's model read back from
    its graphs, the head attached, every variant re-exported; the other outputs do not move."""
    from radreport.model.export import export_onnx, quantize_int8
    from radreport.model.fine_grounding import package_folder
    from radreport.model.onnx_runtime import OnnxReportModel
    from radreport.model.report import ModelInfo, model_files

    model = tiny_v2().eval()
    plain = tmp_path / "plain"
    for graph in export_onnx(model, plain):
        quantize_int8(graph, graph.with_name(f"{graph.stem}.int8.onnx"))
    ModelInfo("tiny", "0.1.0", 64, extra={"model_config": model.config.to_dict()}).save(
        plain / "model.json")
    (plain / "tokenizer.json").write_text("{}")
    head = FineGroundingHead(head_config_for(model))
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    save_head(head, tmp_path / "head", {"note": "test"})
    gaps = package_folder(plain, tmp_path / "head", tmp_path / "fine", "0.1.1", parity_images=2)
    assert gaps == {"fp32": 0.0, "int8": 0.0}  # no FP16 variant in the source folder
    info = ModelInfo.load(tmp_path / "fine" / "model.json")
    assert info.version == "0.1.1" and info.extra["model_config"]["fine_head"]
    assert info.extra["fine_head"]["from"] == "tiny:0.1.0"
    assert (tmp_path / "fine" / "tokenizer.json").read_text() == "{}"
    images = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)
    encoded = OnnxReportModel(*model_files(tmp_path / "fine", "int8")).encode(images)
    assert encoded.fine_query_maps is not None
    assert encoded.fine_query_maps.shape == (1, Q + D, 16 * 16)

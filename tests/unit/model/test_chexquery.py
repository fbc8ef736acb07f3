"""Model v2: CheXQuery encoder, the findings prompt, records on disk, export with a prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import default_collate

from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.cache import PhantomReportDataset, StudyCache, render_record, spec_for
from radreport.model.chexquery import region_kl
from radreport.model.config import ModelConfig
from radreport.model.export import write_model_folder
from radreport.model.model import RadReportModel
from radreport.model.prompt import PROMPT_LEN, ClinicalContext, consistent_findings
from radreport.model.query_grounding import GROUNDING_FILE, MapTuning, SentenceGrounder
from radreport.model.report import ReportGenerator
from radreport.model.tokenizer import ReportTokenizer

SEEDS = [0, 1, 4, 5]  # seed 0: a mass, a pneumothorax and a rib fracture; seed 2 is normal


def v2_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, arch="chexquery", image_size=64, patch=16,
                       conv_channels=(4, 8, 8, 16, 16), enc_width=16, enc_heads=2,
                       query_layers=1, dec_depth=2, dec_width=16, dec_heads=2,
                       prompt_len=PROMPT_LEN, max_len=PROMPT_LEN + 150)


@pytest.fixture(scope="module")
def batch(tokenizer: ReportTokenizer) -> dict[str, torch.Tensor]:
    dataset = PhantomReportDataset(SEEDS, tokenizer, v2_config(tokenizer.vocab_size))
    return default_collate([dataset[i] for i in range(len(dataset))])


def test_forward_shapes_and_maps(tokenizer: ReportTokenizer,
                                 batch: dict[str, torch.Tensor]) -> None:
    config = v2_config(tokenizer.vocab_size)
    torch.manual_seed(0)
    out = RadReportModel(config)(**batch)
    n, q = config.n_patches, config.n_labels + config.n_anatomy_queries
    assert out.cross_attn.shape == (4, config.max_len, n)  # patches only, no fused token
    torch.testing.assert_close(out.cross_attn.sum(-1), torch.ones(4, config.max_len))
    assert out.query_attn is not None and out.query_attn.shape == (4, q, n)
    torch.testing.assert_close(out.query_attn.sum(-1), torch.ones(4, q))
    assert out.loss is not None and torch.isfinite(out.loss)
    assert set(out.loss_parts) == {"lm", "ground", "entropy", "label", "query"}
    assert all(torch.isfinite(v) and v > 0 for v in out.loss_parts.values())


def test_query_loss_is_zero_on_the_region_and_skips_missing_masks() -> None:
    masks = torch.zeros(1, 3, 4)
    masks[0, 0, :2] = 1.0
    masks[0, 1, 1:] = 0.5
    attn = torch.full((1, 3, 4), 0.25)
    attn[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    attn[0, 1] = torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3])
    weight = torch.ones(1, 3)  # row 2 has no mask: a dataset without masks trains nothing
    assert region_kl(attn, masks, weight).item() == pytest.approx(0.0, abs=1e-6)
    assert region_kl(torch.full((1, 3, 4), 0.25), masks, weight).item() > 0.1
    assert region_kl(attn, torch.zeros(1, 3, 4), weight).item() == 0.0


def test_prompt_holds_the_true_findings_and_is_never_a_target(
        tokenizer: ReportTokenizer, batch: dict[str, torch.Tensor]) -> None:
    tokens, targets = batch["tokens"][0], batch["targets"][0]
    prompt = tokenizer.tokens(tokens[:PROMPT_LEN].tolist())
    present = dict(zip(CHEXPERT_LABELS, batch["label_targets"][0].bool().tolist(), strict=True))
    assert present["Pneumothorax"] and present["Fracture"] and present["Lung Lesion"]
    for i, label in enumerate(CHEXPERT_LABELS):
        assert prompt[i] == f"[L{i:02d}{'+' if present[label] else '-'}]", label
    assert tokens[PROMPT_LEN].item() == tokenizer.bos_id
    assert torch.all(targets[:PROMPT_LEN] == tokenizer.pad_id)
    assert targets[PROMPT_LEN].item() != tokenizer.pad_id  # the report's first word
    # the condition queries of present findings are supervised, absent ones are not
    weight = batch["query_weight"][0]
    assert torch.equal(weight[: len(CHEXPERT_LABELS)], batch["label_targets"][0])
    assert batch["query_masks"][0, 9].sum() > 0  # the pneumothorax region


def test_prompt_tokens_and_context(tokenizer: ReportTokenizer) -> None:
    present = [False] * 14
    present[CHEXPERT_LABELS.index("Consolidation")] = True
    closed = consistent_findings(present)
    assert closed[CHEXPERT_LABELS.index("Lung Opacity")] and not closed[0]
    assert consistent_findings([True] + [False] * 13)[0]  # nothing found: No Finding
    ids = tokenizer.encode_prompt(present, ClinicalContext("Fever and cough.", 67, "F"))
    words = tokenizer.tokens(ids)
    assert len(ids) == PROMPT_LEN
    assert words[14:16] == ["[SEXF]", "[AGE6]"]
    assert words[16:20] == ["fever", "and", "cough", "."]
    bare = tokenizer.tokens(tokenizer.encode_prompt(present))
    assert bare[14:16] == ["[SEX?]", "[AGE?]"] and set(bare[16:]) == {"[PAD]"}
    assert tokenizer.decode([*ids, tokenizer.bos_id, *tokenizer.encode_plain("no.")]) == "No."


def test_cache_is_resumable_and_matches_live_records(tokenizer: ReportTokenizer,
                                                     tmp_path: Path) -> None:
    config = v2_config(tokenizer.vocab_size)
    (tmp_path / "tok.json").write_text("v")
    cache = StudyCache(tmp_path, [0, 1, 2], spec_for(config), 256, "hash")
    cache.done[1] = True  # as if an earlier run had written study 1 and died
    cache.build(tokenizer, workers=1, progress=False, desc="")
    assert cache.done.all()
    assert not cache.arrays["ids"][1].any()  # study 1 was not rendered again
    from radreport.data.phantoms.generator import generate_study
    live = render_record(generate_study(2, 256), tokenizer, spec_for(config))
    again = StudyCache(tmp_path, [0, 1, 2], spec_for(config), 256, "hash")
    for name, value in live.items():
        np.testing.assert_array_equal(again.record(2)[name], value, err_msg=name)


def test_a_few_steps_learn_labels_and_query_maps(tokenizer: ReportTokenizer,
                                                 batch: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = RadReportModel(v2_config(tokenizer.vocab_size)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        out = model(**batch)
        assert out.loss is not None
        history.append({k: v.item() for k, v in out.loss_parts.items()})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    first, last = history[0], history[-1]
    for part in ("lm", "label", "query", "ground"):
        assert last[part] < first[part], (part, first, last)


def test_export_generates_from_the_prompt(tokenizer: ReportTokenizer, tmp_path: Path) -> None:
    """ONNX matches PyTorch with a prompt; the draft carries the safety read-out."""
    config = v2_config(tokenizer.vocab_size)
    torch.manual_seed(0)
    model = RadReportModel(config).eval()
    tokenizer.save(tmp_path / "tokenizer.json")
    write_model_folder(model.checkpoint(), tmp_path / "tokenizer.json", tmp_path / "m",
                       "v2-test", "0")
    generator = ReportGenerator(tmp_path / "m")
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    batch = image[None, None]
    encoded = generator.onnx.encode(batch)
    with torch.no_grad():
        feats = model.encode(torch.from_numpy(batch))
    np.testing.assert_allclose(encoded.label_probs, torch.sigmoid(feats.label_logits).numpy(),
                               atol=1e-5)
    assert encoded.features is not None
    np.testing.assert_allclose(encoded.features, feats.pooled.numpy(), atol=1e-5)
    assert encoded.query_maps is not None and feats.query_attn is not None
    np.testing.assert_allclose(encoded.query_maps, feats.query_attn.numpy(), atol=1e-5)
    prompt = np.array([tokenizer.encode_prompt([False] * 14)])
    ids, _ = generator.onnx.greedy_from_memory(encoded.memory_kv, prompt=prompt, max_len=5)
    with torch.no_grad():
        step = model.decode(torch.cat([torch.from_numpy(prompt),
                                       torch.tensor([[tokenizer.bos_id]])], dim=1),
                            model.memory_kv(feats.memory))
    logits = step.logits[0, -1]
    logits[4:46] = -torch.inf  # the runtime never generates prompt tokens
    assert ids[0, 0] == int(logits.argmax())
    with pytest.raises(ValueError, match="needs a prompt"):
        next(generator.onnx.greedy_steps(encoded.memory_kv))
    draft = generator.generate([image])[0]
    assert draft.safety is not None and draft.safety.ood_score is None  # not calibrated
    assert all(i < 4 or i >= 46 for i in draft.token_ids)
    assert draft.sentences

    # grounding.json tunings refine every sentence's map with the image's query maps
    tunings = {kind: MapTuning(0.5, 0.5) for kind in ("finding", "organ:lungs", "organ:heart")}
    grounder = SentenceGrounder(generator.info.labels, {**tunings, "other": MapTuning(0, 0.5)})
    grounder.save(tmp_path / "m" / GROUNDING_FILE)
    tuned = ReportGenerator(tmp_path / "m").generate([image])[0]
    assert [s.text for s in tuned.sentences] == [s.text for s in draft.sentences]
    for raw, refined in zip(draft.sentences, tuned.sentences, strict=True):
        expected = grounder.refine(raw.text, raw.heatmap, encoded.query_maps[0])
        np.testing.assert_allclose(refined.heatmap, expected, atol=1e-6)
        assert not np.allclose(refined.heatmap, raw.heatmap)


def test_query_maps_are_added_to_encoders_exported_without_them(
        tokenizer: ReportTokenizer, tmp_path: Path) -> None:
    """A folder exported before ``query_maps`` was an output gets the same maps."""
    import onnx

    from radreport.model.export import QUERY_MAPS, add_query_maps_output

    torch.manual_seed(1)
    model = RadReportModel(v2_config(tokenizer.vocab_size)).eval()
    tokenizer.save(tmp_path / "tokenizer.json")
    write_model_folder(model.checkpoint(), tmp_path / "tokenizer.json", tmp_path / "m", "v", "0")
    encoder = tmp_path / "m" / "encoder.onnx"
    proto = onnx.load(str(encoder))
    old = [o for o in proto.graph.output if o.name != QUERY_MAPS]
    del proto.graph.output[:]
    proto.graph.output.extend(old)
    for node in proto.graph.node:  # as before: the maps fed nothing and had no name
        node.output[:] = [f"{o}_dead" if o == QUERY_MAPS else o for o in node.output]
    onnx.save(proto, str(tmp_path / "old.onnx"))
    add_query_maps_output(tmp_path / "old.onnx")
    image = np.random.default_rng(1).random((2, 1, 64, 64), dtype=np.float32)
    maps = [ort.InferenceSession(str(p)).run([QUERY_MAPS], {"image": image})[0]
            for p in (encoder, tmp_path / "old.onnx")]
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-6)
    assert maps[0].shape == (2, 20, 16) and np.allclose(maps[0].sum(-1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="not a v2 encoder"):
        add_query_maps_output(tmp_path / "m" / "decoder_step.onnx", tmp_path / "x.onnx")


def test_batchnorm_statistics_are_recomputed_from_training_batches(
        tokenizer: ReportTokenizer, batch: dict[str, torch.Tensor]) -> None:
    """Lagging running statistics are replaced by the training batches' own."""
    from radreport.model.train import recalibrate_batchnorm

    torch.manual_seed(0)
    model = RadReportModel(v2_config(tokenizer.vocab_size))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(3.0)  # as stale as a fast-moving average can get
    images = batch["images"]
    with torch.no_grad():
        batch_stats = model.train().encode(images).label_logits
        stale = model.eval().encode(images).label_logits
    recalibrate_batchnorm(model, [batch], torch.device("cpu"), batches=1)
    assert not model.training
    with torch.no_grad():
        fresh = model.encode(images).label_logits
    assert (stale - batch_stats).abs().max() > 10 * (fresh - batch_stats).abs().max()
    torch.testing.assert_close(fresh, batch_stats, atol=2e-3, rtol=0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # FP16 range truncation notices
def test_fp16_variant_of_a_v2_model_loads_and_agrees(tokenizer: ReportTokenizer,
                                                     tmp_path: Path) -> None:
    """The query blocks' attention scale is shape arithmetic, which stays float32."""
    from radreport.model.export import convert_fp16

    torch.manual_seed(2)
    model = RadReportModel(v2_config(tokenizer.vocab_size)).eval()
    tokenizer.save(tmp_path / "tokenizer.json")
    write_model_folder(model.checkpoint(), tmp_path / "tokenizer.json", tmp_path / "m", "v", "0",
                       variants=["fp16"])
    image = np.random.default_rng(2).random((2, 1, 64, 64), dtype=np.float32)
    full, half = (ort.InferenceSession(str(tmp_path / "m" / name)).run(None, {"image": image})
                  for name in ("encoder.onnx", "encoder.fp16.onnx"))
    for a, b in zip(full, half, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, atol=2e-2)
    draft = ReportGenerator(tmp_path / "m", "fp16").generate([image[0, 0]])[0]
    assert draft.token_ids == ReportGenerator(tmp_path / "m").generate([image[0, 0]])[0].token_ids
    assert convert_fp16  # the converter write_model_folder used

"""A GPT-2 from a local Hugging Face folder as the decoder: same function, trains, exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from test_pretrained import resnet18_state
from tiny import tiny_config
from tokenizers import ByteLevelBPETokenizer, Tokenizer

from radreport.model.config import ModelConfig
from radreport.model.export import export_onnx, stack_kv
from radreport.model.model import RadReportModel
from radreport.model.onnx_runtime import OnnxReportModel
from radreport.model.pretrained import load_pretrained, param_groups, prepare
from radreport.model.tokenizer import ReportTokenizer
from radreport.model.train import load_config, train

TEXTS = ["No acute cardiopulmonary process.", "Small left pleural effusion.",
         "Right lower lobe consolidation concerning for pneumonia.",
         "Heart size is normal. No pneumothorax."]
HF_VOCAB, WIDTH, LAYERS, HEADS = 300, 32, 2, 2
TINY = Path(__file__).parents[3] / "radreport" / "model" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with cross-attention and its byte-level BPE tokenizer, saved the
    Hugging Face way, weights perturbed so that a wrong copy cannot pass."""
    out = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=HF_VOCAB, min_frequency=1, show_progress=False)
    bpe.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=HF_VOCAB, n_positions=192, n_embd=WIDTH,
                                     n_layer=LAYERS, n_head=HEADS, add_cross_attention=True,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return out


def hf_config(folder: Path, vocab: int, **overrides: Any) -> ModelConfig:
    params: dict[str, Any] = dict(vocab_size=vocab, dec_depth=LAYERS, dec_width=WIDTH,
                                  dec_heads=HEADS, max_len=64, decoder="hf",
                                  decoder_path=str(folder), dec_activation="gelu_tanh")
    params.update(overrides)
    return tiny_config(**params)


def test_decoder_computes_what_the_hf_model_computes(folder: Path) -> None:
    """Logits and cross-attention of our decoder = Hugging Face's GPT2LMHeadModel's."""
    model = load_pretrained(RadReportModel(hf_config(folder, HF_VOCAB))).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager")
    hf.eval()
    memory = torch.randn(2, 9, WIDTH)
    tokens = torch.randint(0, HF_VOCAB, (2, 7))
    with torch.no_grad():
        ours = model.decode(tokens, model.memory_kv(memory))
        theirs = hf(input_ids=tokens, encoder_hidden_states=memory, output_attentions=True)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=1e-4)
    maps = torch.stack(theirs.cross_attentions).mean(dim=(0, 2))  # layers, heads
    torch.testing.assert_close(ours.cross_attn, maps, atol=1e-5, rtol=1e-4)


def test_folder_must_match_the_config(folder: Path) -> None:
    with pytest.raises(ValueError, match="dec_depth"):
        load_pretrained(RadReportModel(hf_config(folder, HF_VOCAB, dec_depth=3)))
    with pytest.raises(ValueError, match="dec_activation"):
        load_pretrained(RadReportModel(hf_config(folder, HF_VOCAB, dec_activation="gelu")))
    with pytest.raises(ValueError, match="go together"):
        tiny_config(decoder="hf")


@pytest.fixture(scope="module")
def words() -> ReportTokenizer:
    return ReportTokenizer.train(TEXTS)


def test_our_words_start_from_their_pieces(folder: Path, words: ReportTokenizer) -> None:
    model = load_pretrained(RadReportModel(hf_config(folder, words.vocab_size)),
                            [words.id_to_token(i) for i in range(words.vocab_size)])
    pieces = Tokenizer.from_file(str(folder / "tokenizer.json"))
    wte = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).transformer.wte.weight
    word = words.encode_plain("effusion")[0]
    ids = pieces.encode(" effusion", add_special_tokens=False).ids
    torch.testing.assert_close(model.decoder.tok_emb.weight[word], wte[ids].mean(0).detach())
    assert model.decoder.lm_head.weight is model.decoder.tok_emb.weight


def _batch(vocab: int, bos: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(4, vocab, (2, 6), generator=gen)
    return {"images": torch.rand(2, 1, 64, 64, generator=gen),
            "tokens": torch.cat([torch.full((2, 1), bos), ids[:, :-1]], dim=1), "targets": ids}


def test_lora_trains_merges_and_exports(folder: Path, words: ReportTokenizer,
                                        tmp_path: Path) -> None:
    torch.manual_seed(2)
    vocab = words.vocab_size
    model = load_pretrained(RadReportModel(hf_config(folder, vocab, projector="mlp2")),
                            [words.id_to_token(i) for i in range(vocab)])
    prepare(model, lora_rank=4, lora_alpha=8)
    block: Any = model.decoder.blocks[0]
    qkv = block.self_attn.qkv
    base = qkv.base_layer.weight.detach().clone()
    assert not qkv.base_layer.weight.requires_grad and qkv.lora_A.default.weight.requires_grad
    assert block.cross_attn.q.weight.requires_grad  # new: trains in full
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 1.0))
    model.train()
    for _ in range(2):
        out = model(**_batch(vocab, model.config.bos_id))
        assert out.loss is not None and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert torch.equal(qkv.base_layer.weight, base)
    assert qkv.lora_B.default.weight.abs().sum() > 0  # B starts at zero: it learned

    model.eval()
    merged = RadReportModel.from_checkpoint(model.checkpoint()).eval()
    assert not any("lora" in k for k in merged.state_dict())
    batch = _batch(vocab, model.config.bos_id)
    with torch.no_grad():
        want, got = model(**batch), merged(**batch)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-4)

    runtime = OnnxReportModel(*export_onnx(merged, tmp_path))
    encoded = runtime.encode(batch["images"].numpy())
    logits, _, attn = runtime.step(batch["tokens"].numpy(), runtime.empty_past(2),
                                   encoded.memory_kv)
    with torch.no_grad():
        feats = merged.encode(batch["images"])
        kv = merged.memory_kv(feats.memory)
        ref = merged.decode(batch["tokens"], kv)
    np.testing.assert_allclose(encoded.memory_kv, stack_kv(kv).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(attn, ref.cross_attn.numpy(), atol=1e-4, rtol=0)


def test_training_run_starts_from_the_pretrained_parts(folder: Path, tmp_path: Path) -> None:
    """``radreport train``'s loop: backbone and decoder read from their files, the frozen
    backbone out of the optimizer, LoRA adapters in the checkpoint, merged on reading."""
    torch.save(resnet18_state(), tmp_path / "resnet18.pth")
    config = load_config(TINY, [
        'train.device="cpu"', 'model.arch="chexquery"', "model.patch=16",
        'model.backbone="torchvision:resnet18"',
        f'model.backbone_checkpoint="{tmp_path / "resnet18.pth"}"', 'model.projector="mlp2"',
        'model.decoder="hf"', f'model.decoder_path="{folder}"', 'model.dec_activation="gelu_tanh"',
        f"model.dec_depth={LAYERS}", f"model.dec_width={WIDTH}", f"model.dec_heads={HEADS}",
        "train.freeze_backbone=true", "train.lora_rank=2", "train.backbone_lr_ratio=0.1"])
    train(config, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state, saved = ckpt["state_dict"], resnet18_state()
    for key in ("layer3.1.conv2.weight", "layer2.0.downsample.1.running_var"):
        assert torch.equal(state[f"encoder.cnn.net.{key}"], saved[key])
    c_attn = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).transformer.h[0]
    assert torch.equal(state["decoder.blocks.0.self_attn.qkv.base_layer.weight"],
                       c_attn.attn.c_attn.weight.detach().T)
    assert "decoder.blocks.1.mlp.fc.lora_A.default.weight" in state
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]] == ["new"]
    merged = RadReportModel.from_checkpoint(ckpt)
    assert not any("lora" in k for k in merged.state_dict())

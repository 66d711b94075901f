"""Next-scale (VAR) decoding: the block-causal mask, one forward per scale, cache == recomputation, shapes and
ranges, CFG's ends, and a tiny class-conditional model that learns fixed id pyramids."""

from __future__ import annotations

import pytest
import torch

from tests.unit.generators.conftest import TINY_LLAMA
from tokenloom.generators import CFG, LoomModel, ModalityVocab, Sampler, TopK, VocabularyLayout
from tokenloom.generators.next_scale import (
    NextScaleModel,
    block_causal_mask,
    generate_next_scale,
    next_scale_loss,
    scale_levels,
)
from tokenloom.tokenizers.quantizers.multiscale import VAR_SCALES, MultiScaleResidualQuantizer

SCALES = (1, 2, 3)
CODES = 8
LABELS = [0, 1, 2, 3]


def tiny_next_scale(scales=SCALES, seed: int = 0, attn_implementation: str = "sdpa", **llama):
    torch.manual_seed(seed)
    quantizer = MultiScaleResidualQuantizer(codebook_size=CODES, dim=4, scales=scales).eval()
    length = sum(s * s for s in scales)
    layout = VocabularyLayout([ModalityVocab("label", 4, tokens_per_segment=1), ModalityVocab("image", CODES, tokens_per_segment=length)])
    loom = LoomModel(layout, {**TINY_LLAMA, **llama}, attn_implementation=attn_implementation)
    return NextScaleModel.from_tokenizer(loom, quantizer).eval(), quantizer


@pytest.fixture
def model_and_tokenizer():
    return tiny_next_scale()


def test_the_mask_is_block_causal_over_scales():
    assert scale_levels(SCALES).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    mask = block_causal_mask(SCALES).int()
    # scale 0 (token 0) sees itself; scale 1 (tokens 1-4) sees tokens 0-4; scale 2 (5-13) sees everything
    want = torch.zeros(14, 14, dtype=torch.int)
    want[0, :1] = 1
    want[1:5, :5] = 1
    want[5:, :] = 1
    assert torch.equal(mask, want)


def test_the_backbone_attends_block_causally(model_and_tokenizer):
    """HF takes our 4-D mask as given: a token sees later tokens of its own scale, never a later scale's."""
    model, _ = model_and_tokenizer
    torch.manual_seed(1)
    x_BLD = torch.randn(1, 14, model.loom.backbone.config.hidden_size)
    with torch.no_grad():
        base = model.hidden(x_BLD, 0, 14)
        later_scale = x_BLD.clone()
        later_scale[:, 5] += 1.0  # the first token of scale 2
        moved = model.hidden(later_scale, 0, 14)
        same_scale = x_BLD.clone()
        same_scale[:, 4] += 1.0  # the last token of scale 1
        moved_within = model.hidden(same_scale, 0, 14)
    assert torch.allclose(base[:, :5], moved[:, :5]) and not torch.allclose(base[:, 5:], moved[:, 5:])
    assert not torch.allclose(base[:, 1], moved_within[:, 1])  # a causal mask would hide token 4 from token 1
    assert torch.allclose(base[:, 0], moved_within[:, 0])


@pytest.mark.parametrize("scales", [SCALES, VAR_SCALES])
def test_exactly_one_forward_per_scale(scales):
    model, tokenizer = tiny_next_scale(scales, hidden_size=16, intermediate_size=32)
    calls = []
    handle = model.loom.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = generate_next_scale(model, tokenizer, [1, 2], cfg=CFG(2.0, schedule="linear"), backend="hf")
    finally:
        handle.remove()
    assert out.forward_passes == len(calls) == len(scales)
    assert out.ids_BL.shape == (2, sum(s * s for s in scales))


def test_kv_cache_equals_recomputation_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    cached = generate_next_scale(model, tokenizer, LABELS)
    recomputed = generate_next_scale(model, tokenizer, LABELS, use_cache=False)
    assert torch.equal(cached.ids_BL, recomputed.ids_BL)
    assert torch.allclose(cached.f_hat_BChw, recomputed.f_hat_BChw)
    assert cached.forward_passes == recomputed.forward_passes == len(SCALES)
    eager, _ = tiny_next_scale(attn_implementation="eager")  # same weights, the additive-mask path
    assert torch.equal(generate_next_scale(eager, tokenizer, LABELS).ids_BL, cached.ids_BL)


def test_ids_have_each_scales_shape_and_lie_in_the_image_range(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = generate_next_scale(model, tokenizer, LABELS * 2, sampler=Sampler([TopK(5)], seed=3))
    assert [tuple(i.shape) for i in out.ids] == [(8, s * s) for s in SCALES]
    assert all(i.dtype == torch.long and i.min() >= 0 and i.max() < CODES for i in out.ids)
    lo, hi = model.layout.range("image")
    assert out.layout_ids_BL.min() >= lo and out.layout_ids_BL.max() < hi
    assert out.f_hat_BChw.shape == (8, 4, 3, 3)
    assert torch.allclose(out.f_hat_BChw, tokenizer.ids_to_codes(out.ids), atol=1e-6)


def test_cfg_scale_1_and_0_equal_the_conditional_and_unconditional_models(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    conditional = generate_next_scale(model, tokenizer, LABELS).ids_BL
    unconditional = generate_next_scale(model, tokenizer, [-1] * 4).ids_BL
    assert not torch.equal(conditional, unconditional)  # the label matters to this random model
    assert torch.equal(generate_next_scale(model, tokenizer, LABELS, cfg=CFG(1.0)).ids_BL, conditional)
    assert torch.equal(generate_next_scale(model, tokenizer, LABELS, cfg=CFG(0.0)).ids_BL, unconditional)
    # VAR's ramp: the first scale is unguided, so it equals the conditional model's first scale
    ramped = generate_next_scale(model, tokenizer, LABELS, cfg=CFG(5.0, schedule="linear"))
    assert torch.equal(ramped.ids[0], generate_next_scale(model, tokenizer, LABELS).ids[0])


def test_a_tiny_model_learns_fixed_pyramids_per_class():
    model, tokenizer = tiny_next_scale(seed=0)
    generator = torch.Generator().manual_seed(0)
    pyramids = [torch.randint(0, CODES, (4, s * s), generator=generator) for s in SCALES]  # one per class
    labels = torch.arange(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(200):
        loss = next_scale_loss(model, pyramids, labels, tokenizer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    out = generate_next_scale(model, tokenizer, [3, 0, 2, 1, 1])
    want = torch.cat(pyramids, dim=1)[[3, 0, 2, 1, 1]]
    assert torch.equal(out.ids_BL, want)


def test_condition_dropout_trains_the_null_start_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = [torch.randint(0, CODES, (4, s * s), generator=torch.Generator().manual_seed(0)) for s in SCALES]
    with torch.no_grad():
        dropped = next_scale_loss(model, ids, LABELS, tokenizer, condition_dropout=1.0)
        null = next_scale_loss(model, ids, [-1] * 4, tokenizer)
        kept = next_scale_loss(model, ids, LABELS, tokenizer)
    assert torch.equal(dropped, null) and not torch.equal(dropped, kept)


def test_bad_inputs_name_the_knob(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="labels must lie in"):
        generate_next_scale(model, tokenizer, [7])
    with pytest.raises(ValueError, match="scales"):
        generate_next_scale(model, MultiScaleResidualQuantizer(CODES, 4, scales=(1, 3)), [0])
    with pytest.raises(TypeError, match="image/multiscale"):
        generate_next_scale(model, object(), [0])


def test_save_load_and_the_loss_over_packed_rows(tmp_path, model_and_tokenizer):
    from tokenloom.generators.training import TokenShards, collate, train
    from tokenloom.modality import batch_to_table

    model, quantizer = model_and_tokenizer
    torch.manual_seed(1)
    ids = [torch.randint(0, CODES, (6, s * s)) for s in SCALES]
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    layout = model.layout
    rows = [layout.pack([("label", [int(y)]), ("image", torch.cat([i[b] for i in ids]))]).ids_L for b, y in enumerate(labels)]
    rows[5] = layout.drop_condition(rows[5], ["label"])  # a dropped condition: the label is NULL
    ids_BL, mask_BL = collate(layout, [torch.from_numpy(r) for r in rows])
    expected = next_scale_loss(model, ids, torch.tensor([0, 1, 2, 3, 0, -1]), quantizer)
    torch.testing.assert_close(model.loss(ids_BL, mask_BL), expected)

    model.save_pretrained(tmp_path / "ns")
    loaded = NextScaleModel.from_pretrained(tmp_path / "ns", tokenizer=quantizer)
    torch.testing.assert_close(loaded.loss(ids_BL, mask_BL), expected)
    a = generate_next_scale(model, quantizer, LABELS).ids_BL
    assert torch.equal(generate_next_scale(loaded, quantizer, LABELS).ids_BL, a)
    with pytest.raises(RuntimeError, match="attach_tokenizer"):
        NextScaleModel.from_pretrained(tmp_path / "ns").loss(ids_BL, mask_BL)

    # training.train drives a next-scale model over token shards like a next-token one (and checkpoints it)
    import pyarrow.parquet as pq

    (tmp_path / "shards").mkdir()
    table = batch_to_table({"label": labels.numpy(), "image_tokens": torch.cat(ids, 1).numpy().astype("int32")})
    pq.write_table(table, tmp_path / "shards" / "part-0.parquet")
    dataset = TokenShards(str(tmp_path / "shards"), layout, label_column="label", condition_dropout=0.2)
    metrics = train(model, dataset, 6, batch_size=3, learning_rate=3e-3, checkpoint_dir=str(tmp_path / "ckpt"))
    assert metrics["steps"] == 6 and all(torch.isfinite(torch.tensor(metrics["losses"])))
    assert NextScaleModel.from_pretrained(tmp_path / "ckpt" / "model").scales == list(SCALES)


@pytest.mark.parametrize("cfg", [None, CFG(2.0, schedule="linear")])
def test_the_fast_path_gives_the_hf_path_ids(model_and_tokenizer, cfg, monkeypatch):
    from tokenloom.generators.fast_llama import FastLlama

    model, quantizer = model_and_tokenizer
    hf = generate_next_scale(model, quantizer, LABELS, cfg=cfg, backend="hf")
    calls, call = [], FastLlama.__call__
    monkeypatch.setattr(FastLlama, "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    fast = generate_next_scale(model, quantizer, LABELS, cfg=cfg, backend="fast")
    assert fast.forward_passes == hf.forward_passes == len(calls) == len(SCALES)
    assert torch.equal(fast.ids_BL, hf.ids_BL)
    torch.testing.assert_close(fast.f_hat_BChw, hf.f_hat_BChw)

"""PAR parallel decoding: the order is a region-place-major bijection, the training stream follows the paper's
Fig. 4a, attention is group-wise, forward passes are exactly n + h*w/n - 1, regions=1 is next-token decoding,
the cache and left padding change nothing, CFG's ends, checkpoints round-trip, and a tiny model learns fixed
images per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.generators.conftest import tiny_model
from tokenloom.generators import CFG, ModalityVocab, Sampler, TopK, VocabularyLayout, generate
from tokenloom.generators.parallel import (
    ParallelDecoding,
    ParallelModel,
    generate_par,
    group_attention_mask,
    par_loss,
    par_order,
    par_stream,
    par_to_raster,
    raster_to_par,
)

PROMPTS = [[("label", [1])], [("label", [2]), ("text", [1, 2, 3, 4, 5])], [("text", [7])]]


def par_layout(shape=(4, 4), codes: int = 8) -> VocabularyLayout:
    label, text = ModalityVocab("label", 4, tokens_per_segment=1), ModalityVocab("text", 12)
    return VocabularyLayout([label, text, ModalityVocab("image", codes, shape=shape)])


def par_model(regions: int = 2, shape=(4, 4), seed: int = 0, **options) -> ParallelModel:
    return ParallelModel(tiny_model(par_layout(shape), seed=seed, **options), regions=regions).eval()


@pytest.mark.parametrize("h, w, regions", [(4, 4, 2), (4, 6, 2), (6, 6, 3), (8, 8, 4), (3, 5, 1)])
def test_par_order_is_a_region_place_major_bijection(h, w, regions):
    order_L, inverse_L = par_order(h, w, regions)
    assert torch.equal(order_L.sort().values, torch.arange(h * w))
    assert torch.equal(order_L[inverse_L], torch.arange(h * w)) and torch.equal(inverse_L[order_L], torch.arange(h * w))
    n, hr, wr = regions * regions, h // regions, w // regions
    rows, cols = order_L // w, order_L % w
    region_kn = ((rows // hr) * regions + cols // wr).view(-1, n)
    place_kn = ((rows % hr) * wr + cols % wr).view(-1, n)
    assert (region_kn == torch.arange(n)).all()  # every group: one token of each region, regions in raster order
    assert (place_kn == torch.arange(h * w // n)[:, None]).all()  # at the same place; group 0: each region's first
    ids_BL = torch.randint(0, 100, (2, h * w))
    assert torch.equal(par_to_raster(raster_to_par(ids_BL, h, w, regions), h, w, regions), ids_BL)


def test_par_order_example_and_bad_regions():
    assert par_order(2, 4, 2)[0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]  # the docstring's example
    with pytest.raises(ValueError, match="regions=3 must be >= 1 and divide the grid"):
        par_order(4, 4, 3)


def test_the_training_stream_follows_the_paper():
    """<bos> <begin> g0 (4 codes, sequential) T1 T2 T3 g1 (4 codes, parallel) <end> <eos>, for a 2x4 grid."""
    model = par_model(regions=2, shape=(2, 4))
    layout = model.layout
    codes = np.arange(8) + layout.range("image")[0]
    ids_L = layout.pack([("image", np.arange(8).reshape(2, 4))]).ids_L
    ids_S, slot_S, block_S, source_S, speaker_S = par_stream(model, ids_L)
    pad = layout.pad_id
    assert ids_S[2:13].tolist() == [*codes[[0, 2, 4, 6]], pad, pad, pad, *codes[[1, 3, 5, 7]]]
    assert slot_S.tolist() == [-1] * 6 + [0, 1, 2] + [-1] * 6
    # g0 is next-token; g1_j is predicted from input j of the block [g0_3, T1, T2, T3]
    assert block_S.tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5, 9, 9, 9, 9, 13, 14]
    assert source_S.tolist() == [-1, 0, 1, 2, 3, 4, -1, -1, -1, 5, 6, 7, 8, 12, 13]
    image = layout.index("image")
    assert speaker_S[2:6].tolist() == [image] * 4 and speaker_S[9:13].tolist() == [image] * 4
    assert speaker_S[13] == -2  # <end:image> is forced: not scored


def test_group_attention_mask():
    block_BL = torch.tensor([[0, 1, 2, 2, 2, 5]])
    valid_BL = torch.tensor([[0, 1, 1, 1, 1, 1]])  # column 0 is left padding
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # a padding query sees itself only (never an empty row)
            [0, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0],  # block 2 sees all of itself
            [0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(group_attention_mask(block_BL, valid_BL)[0, 0], want)
    assert torch.equal(group_attention_mask(block_BL, valid_BL, start=4)[0, 0], want[4:])


def test_the_backbone_attends_group_wise():
    model = par_model(regions=2)
    lo, hi = model.layout.range("image")
    ids_BL = torch.randint(lo, hi, (1, 11), generator=torch.Generator().manual_seed(1))
    slot_BL = torch.full((1, 11), -1)
    block_BL = torch.tensor([[0, 1, 2, 3, 3, 3, 3, 7, 7, 7, 7]])
    valid_BL, positions_BL = torch.ones_like(ids_BL), torch.arange(11)[None]
    with torch.no_grad():
        base = model.hidden(ids_BL, slot_BL, block_BL, valid_BL, positions_BL)
        moved = ids_BL.clone()
        moved[0, 6] = lo + (ids_BL[0, 6] - lo + 1) % (hi - lo)  # the last token of block 3
        changed = model.hidden(moved, slot_BL, block_BL, valid_BL, positions_BL)
    assert torch.allclose(base[:, :3], changed[:, :3])  # earlier blocks never see a later one
    assert not torch.allclose(base[:, 3], changed[:, 3])  # the first of a group sees its last (causal would not)


@pytest.mark.parametrize("shape, regions", [((4, 4), 2), ((4, 6), 2), ((4, 4), 4), ((6, 6), 3)])
def test_exactly_n_plus_groups_minus_one_forward_passes(shape, regions):
    model = par_model(regions=regions, shape=shape)
    calls = []
    handle = model.loom.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = generate_par(model, PROMPTS, sampler=Sampler([TopK(4)], seed=0), cfg=CFG(2.0, schedule="linear"))
    finally:
        handle.remove()
    n, length = regions * regions, shape[0] * shape[1]
    assert out.forward_passes == len(calls) == model.passes_per_segment == n + length // n - 1
    assert out.strategy == "parallel" and out.new_ids_BL.shape == (3, length + 3)  # <begin> codes <end> <eos>
    for segments in out.segments():
        image = segments[-1]
        assert image.modality == "image" and image.ids.shape == shape and not image.truncated
        assert image.ids.min() >= 0 and image.ids.max() < 8


def test_regions_1_equals_next_token_decoding():
    model = par_model(regions=1)
    spec = {"segments": [("image", 16)]}
    assert torch.equal(generate_par(model, PROMPTS).sequences_BL, generate(model.loom, PROMPTS, **spec).sequences_BL)
    cfg = CFG(3.0, schedule="linear", condition=("label",))
    guided = generate_par(model, PROMPTS[:2], cfg=cfg)
    assert torch.equal(guided.sequences_BL, generate(model.loom, PROMPTS[:2], cfg=cfg, **spec).sequences_BL)


@pytest.mark.parametrize("cfg", [None, CFG(3.0, condition=("label",))])
def test_kv_cache_equals_recomputation_greedy(cfg):
    model = par_model(regions=2)
    cached = generate_par(model, PROMPTS, cfg=cfg)
    recomputed = generate_par(model, PROMPTS, cfg=cfg, use_cache=False)
    assert torch.equal(cached.sequences_BL, recomputed.sequences_BL)
    assert torch.equal(cached.attention_mask_BL, recomputed.attention_mask_BL)
    assert cached.forward_passes == recomputed.forward_passes == 7
    eager = par_model(regions=2, attn_implementation="eager")  # same weights, the additive-mask path
    assert torch.equal(generate_par(eager, PROMPTS, cfg=cfg).sequences_BL, cached.sequences_BL)


def test_left_padding_does_not_change_a_rows_output():
    model = par_model(regions=2)
    batched = generate_par(model, PROMPTS).new_ids_BL
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(generate_par(model, [prompt]).new_ids_BL[0], batched[row])


def test_cfg_scale_1_and_0_equal_the_conditional_and_unconditional_models():
    model = par_model(regions=2)
    conditional = [[("label", [k])] for k in range(4)]
    unconditional = [model.layout.drop_condition(model.layout.pack(p, add_eos=False).ids_L) for p in conditional]
    want_cond, want_uncond = generate_par(model, conditional).new_ids_BL, generate_par(model, unconditional).new_ids_BL
    assert not torch.equal(want_cond, want_uncond)  # the label matters to this random model
    assert torch.equal(generate_par(model, conditional, cfg=CFG(1.0)).new_ids_BL, want_cond)
    assert torch.equal(generate_par(model, conditional, cfg=CFG(0.0)).new_ids_BL, want_uncond)


def test_par_loss_with_regions_1_is_the_next_token_loss():
    model = par_model(regions=1)
    records = [[("label", [1]), ("image", np.arange(16).reshape(4, 4) % 8)], [("text", [1, 2]), ("image", np.ones(16))]]
    batch = model.layout.pack_batch(records, padding_side="right")
    with torch.no_grad():
        want = model.loom.next_token_loss(batch.ids_BL, batch.attention_mask_BL)
        assert torch.allclose(par_loss(model, batch.ids_BL, batch.attention_mask_BL), want)
        assert torch.allclose(model.loss(batch.ids_BL, batch.attention_mask_BL), want)


def test_a_tiny_model_learns_fixed_images_per_class():
    model = par_model(regions=2, seed=0)
    images = torch.randint(0, 8, (4, 4, 4), generator=torch.Generator().manual_seed(0))  # one 4x4 image per class
    batch = model.layout.pack_batch([[("label", [k]), ("image", images[k])] for k in range(4)], padding_side="right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(150):
        loss = par_loss(model, batch.ids_BL, batch.attention_mask_BL)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1  # the floor is ln(4) / 20: the label itself is drawn uniformly
    labels = [3, 0, 2, 1, 1]
    out = generate_par(model, [[("label", [k])] for k in labels])
    assert out.forward_passes == 7
    assert all(np.array_equal(rows[-1].ids, images[k].numpy()) for rows, k in zip(out.segments(), labels))


def test_checkpoints_round_trip(tmp_path):
    model = par_model(regions=2)
    model.save_pretrained(tmp_path / "par")
    loaded = ParallelModel.from_pretrained(tmp_path / "par")
    assert loaded.regions == 2 and torch.equal(loaded.transition_embed, model.transition_embed)
    assert torch.equal(generate_par(loaded, PROMPTS).sequences_BL, generate_par(model, PROMPTS).sequences_BL)


def test_bad_inputs_name_the_knob():
    with pytest.raises(ValueError, match="divide the grid"):
        par_model(regions=3)
    with pytest.raises(ValueError, match="shape=\\(h, w\\)"):
        ParallelModel(tiny_model(VocabularyLayout.from_sizes(label=4, image=8)), regions=2)
    model = par_model(regions=2)
    with pytest.raises(TypeError, match="generate_par"):
        generate(model.loom, PROMPTS, strategy=ParallelDecoding())
    open_text = model.layout.pack([("text", [1])], add_eos=False).ids_L[:-1]  # <bos> <begin:text> text:1
    with pytest.raises(ValueError, match="prompt ends inside a segment"):
        generate_par(model, [open_text])
    cut = torch.from_numpy(model.layout.pack([("image", np.zeros((4, 4)))]).ids_L[:10])[None]
    with pytest.raises(ValueError, match="complete 'image' segments"):
        par_loss(model, cut)

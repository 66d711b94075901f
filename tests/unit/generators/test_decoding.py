"""Decoding: the KV cache changes nothing, left padding changes nothing, CFG ends, forward-pass counts,
seeded runs, segment scripts, and a tiny class-conditional model that learns to follow its label."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.unit.generators.conftest import TINY_LLAMA, tiny_model
from tokenloom.generators import CFG, LoomModel, ModalityVocab, Sampler, TopK, VocabularyLayout, generate

PROMPTS = [[("label", [1])], [("label", [2]), ("text", [1, 2, 3, 4, 5])], [("image", [0, 1, 2, 3]), ("text", [7])]]


@pytest.mark.parametrize("how", [{"max_new_tokens": 24}, {"segments": [("image", 4), ("text", 6)]}])
def test_kv_cache_decoding_equals_no_cache_decoding(model, how):
    cached = generate(model, PROMPTS, **how)
    recomputed = generate(model, PROMPTS, use_cache=False, **how)
    assert torch.equal(cached.sequences_BL, recomputed.sequences_BL)
    assert cached.forward_passes == recomputed.forward_passes


def test_left_padding_does_not_change_a_rows_output(model):
    batched = generate(model, PROMPTS, max_new_tokens=16)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], max_new_tokens=16).new_ids_BL[0]  # stops early when it meets EOS
        assert torch.equal(alone, batched.new_ids_BL[row, : len(alone)])
        assert (batched.new_ids_BL[row, len(alone) :] == model.layout.pad_id).all()
    assert batched.new_ids_BL.shape[1] == 16


def test_cfg_scale_0_and_1_equal_the_unconditional_and_conditional_models(layout, model):
    conditional = [[("label", [k])] for k in range(4)]
    unconditional_ids = [layout.drop_condition(layout.pack(p, add_eos=False).ids_L) for p in conditional]
    spec = {"segments": [("image", 4), ("text", 5)]}
    want_cond = generate(model, conditional, **spec).new_ids_BL
    want_uncond = generate(model, unconditional_ids, **spec).new_ids_BL
    assert not torch.equal(want_cond, want_uncond)  # the condition matters to this random model
    assert torch.equal(generate(model, conditional, cfg=CFG(1.0), **spec).new_ids_BL, want_cond)
    assert torch.equal(generate(model, conditional, cfg=CFG(0.0), **spec).new_ids_BL, want_uncond)
    guided = generate(model, conditional, cfg=CFG(3.0, schedule="linear", condition=("label",)), **spec)
    assert guided.forward_passes == 9 and guided.sequences_BL.shape[0] == 4
    assert layout.describe(unconditional_ids[0]) == "<bos> <begin:label> <null> <end:label>"


def test_forward_passes_count_sampled_tokens(model, layout):
    variable = tiny_model(VocabularyLayout.from_sizes(text=12, audio=8))  # no fixed lengths: every token is sampled
    free = generate(variable, [[("text", [1, 2])], [("audio", [3])]], max_new_tokens=10, sampler=Sampler([TopK(3)]))
    new_tokens = free.new_ids_BL.shape[1]
    assert new_tokens == 10 and free.forward_passes == 1 + (new_tokens - 1)  # the prompt's pass + one per token
    scripted = generate(model, PROMPTS[:2], segments=[("label", 1), ("image", 4), ("text", 3)])
    # 3 begin + 3 end + EOS tokens are forced and ride along with the next pass
    assert scripted.new_ids_BL.shape[1] == 8 + 7 and scripted.forward_passes == scripted.sampled_steps == 8
    segments = scripted.segments()[1][-3:]
    assert [(s.modality, s.ids.shape) for s in segments] == [("label", (1,)), ("image", (2, 2)), ("text", (3,))]


def test_seeded_sampling_is_reproducible_and_the_seed_matters(model):
    def run(seed: int):
        return generate(model, PROMPTS, max_new_tokens=12, sampler=Sampler([TopK(5)], seed=seed))

    assert torch.equal(run(0).sequences_BL, run(0).sequences_BL)
    assert not torch.equal(run(0).sequences_BL, run(1).sequences_BL)


def test_generation_stops_at_eos_and_unpacks(model, layout):
    out = generate(model, [[("label", [1])]] * 6, max_new_tokens=60, sampler=Sampler([], seed=0))
    for ids_L, mask_L, segments in zip(out.new_ids_BL, out.attention_mask_BL[:, out.prompt_length :], out.segments()):
        ids_L = ids_L.tolist()
        if layout.eos_id in ids_L:
            after = ids_L[ids_L.index(layout.eos_id) + 1 :]
            assert all(t == layout.pad_id for t in after) and mask_L[len(ids_L) - len(after) :].sum() == 0
        assert all(s.modality in layout.names for s in segments)


def test_bad_requests_name_the_knob(model):
    with pytest.raises(ValueError, match="exactly one of max_new_tokens or segments"):
        generate(model, PROMPTS)
    with pytest.raises(ValueError, match="4 tokens per segment"):
        generate(model, PROMPTS, segments=[("image", 5)])
    open_image = [0, 8, 20]  # <bos> <begin:image> image:0 -- a prompt that ends inside a segment
    with pytest.raises(ValueError, match="use max_new_tokens"):
        generate(model, [open_image], segments=[("image", 4)])
    assert generate(model, [open_image], max_new_tokens=4).new_ids_BL.shape == (1, 4)


def test_tiny_class_conditional_model_follows_its_label():
    """Label k -> an 'image' of four k's. A few hundred steps on 2 cores; greedy output must follow the label."""
    start = time.perf_counter()
    layout = VocabularyLayout(
        [ModalityVocab("label", 4, tokens_per_segment=1), ModalityVocab("image", 4, shape=(2, 2))]
    )
    torch.manual_seed(0)
    model = LoomModel(layout, TINY_LLAMA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        labels = rng.integers(0, 4, size=32)
        records = [[("label", [k]), ("image", np.full((2, 2), k))] for k in labels]
        batch = layout.pack_batch(records, padding_side="right")
        for row in np.flatnonzero(rng.random(32) < 0.1):  # condition dropout: the unconditional model
            batch.ids_BL[row] = torch.from_numpy(layout.drop_condition(batch.ids_BL[row], ["label"]))
        loss = model.next_token_loss(batch.ids_BL, batch.attention_mask_BL)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prompts = [[("label", [k])] for k in range(4)]
    for cfg in (None, CFG(3.0)):
        out = generate(model, prompts, segments=[("image", 4)], cfg=cfg)
        images = [segments[-1].ids for segments in out.segments()]
        assert [image.tolist() for image in images] == [[[k, k], [k, k]] for k in range(4)], loss.item()
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("shared_head", [False, True])
def test_logits_for_one_speaker_equal_logits_for(layout, shared_head):
    """The decoding step's shortcut (one head speaks for every row) gives `logits_for`'s values exactly."""
    model = tiny_model(layout, shared_head=shared_head)
    hidden_ND = torch.randn(5, TINY_LLAMA["hidden_size"])
    for speaker in [-2, -1, *range(len(layout.modalities))]:
        want_NV = model.logits_for(hidden_ND[:, None], torch.full((5, 1), speaker))[:, 0]
        assert torch.equal(model.logits_for_speaker(hidden_ND, speaker), want_NV)

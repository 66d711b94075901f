"""The lean Llama decoding path gives what the HF backbone gives, with either kernel set: close hidden states
and logits (bit for bit with aten kernels on unpadded rows), the same greedy ids (left-padded uneven prompts,
CFG, segment scripts, speculative decoding), a cache that grows and crops, and a fallback (or an error naming
the reason) for what it does not support."""

from __future__ import annotations

import pytest
import torch

from tests.unit.generators.conftest import TINY_LLAMA, tiny_model
from tokenloom.generators import CFG, LoomModel, Sampler, TopK, fast_llama, generate
from tokenloom.generators.decoding import DecodingState, _prompt_ids
from tokenloom.generators.fast_llama import (
    FastLlama,
    KVCache,
    OneDNNKernels,
    unsupported_reason,
)
from tokenloom.generators.speculative import SpeculativeJacobi

PROMPTS = [[("label", [1])], [("label", [2]), ("text", [1, 2, 3, 4, 5])], [("image", [0, 1, 2, 3]), ("text", [7])]]


@pytest.fixture(params=["aten", "onednn"])
def kernels(request, monkeypatch) -> str:
    """Run a test with each kernel set of the fast path (oneDNN where this PyTorch has it)."""
    if request.param == "onednn" and not OneDNNKernels.works_for(torch.zeros(1)):
        pytest.skip("this PyTorch build has no oneDNN")
    monkeypatch.setattr(fast_llama, "KERNELS", request.param)
    return request.param


def _state(model: LoomModel, backend: str, prompts=PROMPTS, cfg: CFG | None = None) -> DecodingState:
    ids = [_prompt_ids(model.layout, p) for p in prompts]
    return DecodingState(model, ids, Sampler(), cfg, use_cache=True, backend=backend)


def test_the_tiny_llama_takes_the_fast_path_and_eager_falls_back(layout, model):
    assert isinstance(_state(model, "auto").cache, KVCache) and _state(model, "hf").fast is None
    eager = tiny_model(layout, attn_implementation="eager")
    assert "attn_implementation='eager'" in unsupported_reason(eager.backbone)
    assert _state(eager, "auto").fast is None
    with pytest.raises(ValueError, match="backend='fast' cannot run this model: attn_implementation='eager'"):
        _state(eager, "fast")
    with pytest.raises(ValueError, match="choose 'auto'"):
        _state(model, "turbo")


def test_hidden_states_and_logits_match_hf_step_by_step(model, kernels):
    """Prefill over left-padded prompts, then single tokens (one row ends early): same hidden and logits."""
    fast, hf = _state(model, "fast"), _state(model, "hf")
    assert fast.fast.kernels.name == kernels
    for step in range(6):
        hidden_fast, hidden_hf = fast.forward(), hf.forward()
        valid_BL = hf.mask_BL[:, -hidden_hf.shape[1] :] > 0  # padding positions' outputs are never read
        torch.testing.assert_close(hidden_fast[valid_BL], hidden_hf[valid_BL], rtol=1e-5, atol=1e-5)
        speakers = [max(s.open, -1) for s in hf.grammar]
        logits_fast = model.logits_for(hidden_fast[:, -1:], torch.tensor(speakers)[:, None])
        logits_hf = model.logits_for(hidden_hf[:, -1:], torch.tensor(speakers)[:, None])
        torch.testing.assert_close(logits_fast, logits_hf, rtol=1e-5, atol=1e-5)
        tokens_B = logits_hf[:, 0].argmax(-1)
        if step == 2:
            tokens_B[0] = model.layout.eos_id  # row 0 ends: its later tokens are masked PAD
        fast.append(tokens_B)
        hf.append(tokens_B)
    assert torch.equal(fast.ids_BL, hf.ids_BL) and torch.equal(fast.mask_BL, hf.mask_BL)


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[1:2] * 2], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("cfg", [None, CFG(3.0, schedule="linear", condition=("label",))])
@pytest.mark.parametrize("how", [{"max_new_tokens": 24}, {"segments": [("image", 4), ("text", 6)]}])
def test_greedy_ids_equal_the_hf_path(model, how, cfg, prompts, kernels):
    fast = generate(model, prompts, cfg=cfg, backend="fast", **how)
    hf = generate(model, prompts, cfg=cfg, backend="hf", **how)
    assert torch.equal(fast.sequences_BL, hf.sequences_BL)
    assert torch.equal(fast.attention_mask_BL, hf.attention_mask_BL)
    assert fast.forward_passes == hf.forward_passes


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[1:2]], ids=["left-padded", "unpadded"])
def test_speculative_decoding_on_the_fast_path_equals_the_hf_path(model, prompts, kernels):
    def run(backend: str):
        strategy = SpeculativeJacobi(max_new_tokens=20, window=4, init="repeat")
        return generate(model, prompts, strategy=strategy, backend=backend), strategy.kept_per_pass

    (fast, kept_fast), (hf, kept_hf) = run("fast"), run("hf")
    assert torch.equal(fast.sequences_BL, hf.sequences_BL) and kept_fast == kept_hf
    assert torch.equal(fast.sequences_BL, generate(model, prompts, max_new_tokens=20).sequences_BL)


def test_seeded_sampling_is_reproducible_on_the_fast_path(model):
    def run(seed: int):
        return generate(model, PROMPTS, max_new_tokens=12, sampler=Sampler([TopK(5)], seed=seed)).sequences_BL

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_the_cache_grows_past_its_first_capacity(model, kernels):
    """No reserve: buffers and cache double as tokens arrive, and the result stays the HF path's."""
    states = {backend: _state(model, backend) for backend in ("fast", "hf")}
    capacity = states["fast"].cache.capacity
    for _ in range(3 * capacity):
        logits = {b: s.next_logits([max(g.open, -1) for g in s.grammar]) for b, s in states.items()}
        torch.testing.assert_close(logits["fast"], logits["hf"], rtol=1e-5, atol=1e-5)
        tokens_B = logits["hf"].argmax(-1)
        for state in states.values():
            state.append(tokens_B)
    assert states["fast"].cache.capacity > capacity
    assert torch.equal(states["fast"].ids_BL, states["hf"].ids_BL)


def test_rope_scaling_and_biases_are_reproduced(layout, kernels):
    config = dict(TINY_LLAMA, attention_bias=True, mlp_bias=True)
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    torch.manual_seed(0)
    model = LoomModel(layout, config).eval()
    for module in model.modules():  # HF zeroes biases at init: give them values that matter
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    assert FastLlama.for_backbone(model.backbone) is not None
    fast = generate(model, PROMPTS, max_new_tokens=16, backend="fast")
    hf = generate(model, PROMPTS, max_new_tokens=16, backend="hf")
    assert torch.equal(fast.sequences_BL, hf.sequences_BL)


def test_dynamic_rope_falls_back_to_hf(layout):
    config = dict(TINY_LLAMA, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    model = LoomModel(layout, config).eval()
    assert "rope_type='dynamic'" in unsupported_reason(model.backbone)
    assert FastLlama.for_backbone(model.backbone) is None


def test_unpadded_aten_kernels_equal_hf_bit_for_bit(model, monkeypatch):
    monkeypatch.setattr(fast_llama, "KERNELS", "aten")
    prompts = PROMPTS[1:2] * 2
    fast, hf = _state(model, "fast", prompts), _state(model, "hf", prompts)
    for token in (20, 21, 9):
        assert torch.equal(fast.forward(), hf.forward())
        fast.append(torch.tensor([token, token]))
        hf.append(torch.tensor([token, token]))


def test_a_wider_batch_equals_the_hf_path(layout, kernels):
    """16 rows of uneven prompts: oneDNN picks other matmul kernels for wider inputs than for 3 rows."""
    model = tiny_model(layout, seed=1)
    prompts = [[("label", [k % 4]), ("text", list(range(k % 5)))] for k in range(16)]
    fast = generate(model, prompts, max_new_tokens=24, backend="fast")
    assert torch.equal(fast.sequences_BL, generate(model, prompts, max_new_tokens=24, backend="hf").sequences_BL)


def test_changed_weights_rebuild_the_fused_copies(model):
    """An optimizer step between two decodes: the second decodes with the new weights (the fused q/k/v copy
    is rebuilt), exactly as the HF path does."""
    before = generate(model, PROMPTS, max_new_tokens=12)
    first = FastLlama.for_backbone(model.backbone)
    assert FastLlama.for_backbone(model.backbone) is first  # cached while the weights stay
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    model.train()
    model.next_token_loss(before.sequences_BL, before.attention_mask_BL).backward()
    optimizer.step()
    assert FastLlama.for_backbone(model.backbone) is not first
    after = generate(model, PROMPTS, max_new_tokens=12)
    assert not torch.equal(before.sequences_BL, after.sequences_BL)
    assert torch.equal(after.sequences_BL, generate(model, PROMPTS, max_new_tokens=12, backend="hf").sequences_BL)


def test_outputs_are_ordinary_tensors_usable_in_training(model):
    """Decoding runs in inference mode; what it returns must still feed a backward pass."""
    out = generate(model, PROMPTS, max_new_tokens=6)
    assert not out.sequences_BL.is_inference()
    model.train()
    model.next_token_loss(out.sequences_BL, out.attention_mask_BL).backward()


def test_embedding_inputs_and_whole_chunks_match_hf_block_attention(model, kernels):
    """Next-scale's use: inputs given as embeddings, a chunk per scale that sees the cache and itself both ways."""
    fast = FastLlama.for_backbone(model.backbone)
    torch.manual_seed(0)
    x_BLD = torch.randn(2, 9, TINY_LLAMA["hidden_size"])
    level_L = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2])  # scales 1, 2, 2: 1 + 4 + 4 tokens
    block_causal_11LL = (level_L[None, :] <= level_L[:, None])[None, None].expand(2, 1, 9, 9)
    positions_BL = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        want_BLD = model(inputs_embeds_BLD=x_BLD, attention_mask_BL=block_causal_11LL, position_ids_BL=positions_BL)
        cache = fast.new_cache(2, 4)  # grows as the chunks arrive
        chunks = [
            fast(None, cache, a, None, positions_BL[:, a:b], inputs_embeds_BLD=x_BLD[:, a:b], causal=False)
            for a, b in [(0, 1), (1, 5), (5, 9)]
        ]
    torch.testing.assert_close(torch.cat(chunks, 1), want_BLD.hidden_BLD, rtol=1e-5, atol=1e-5)

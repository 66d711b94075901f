"""One decoding loop with a KV cache; decoding strategies are plug-ins; every run counts its forward passes.

    out = generate(model, prompts, max_new_tokens=64, sampler=Sampler([TopK(50)]), cfg=CFG(3.0))
    out = generate(model, prompts, segments=[("image", 256)])   # <begin:image> 256 codes <end:image> <eos>
    out.sequences_BL, out.new_ids_BL, out.forward_passes, out.segments()

`DecodingState` owns the model calls: the batch (left-padded, with position ids that skip the padding), the KV
cache (`fast_llama.KVCache` for the Llama backbones `FastLlama` runs, else HF's ``DynamicCache``),
classifier-free guidance (conditional rows [0, B) and unconditional rows [B, 2B) run in one batch and share
every sampled token) and the forward-pass counter. A strategy owns what one step means:
`NextToken` samples one token per row per forward pass (raster order). Tokens the grammar forces (begin/end
tokens of a segment spec, the end of a fixed-length segment, PAD after EOS) cost no forward pass of their own:
they ride along with the next one, so ``forward_passes`` equals the number of sampled steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokenloom.generators.fast_llama import KVCache, fast_path
from tokenloom.generators.layout import SPECIAL, GrammarState, VocabularyLayout
from tokenloom.generators.model import LoomModel
from tokenloom.generators.packing import PackedSequence, Record, Segment, as_numpy
from tokenloom.generators.sampling import CFG, Greedy, Sampler

Prompt = Record | torch.Tensor | np.ndarray | Sequence[int]


@dataclass
class GenerationOutput:
    """sequences_BL: left-padded prompt + generated ids; new_ids_BL: the generated part (PAD after EOS)."""

    sequences_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    prompt_length: int
    forward_passes: int
    sampled_steps: int
    strategy: str
    layout: VocabularyLayout

    @property
    def new_ids_BL(self) -> torch.Tensor:
        return self.sequences_BL[:, self.prompt_length :]

    @property
    def tokens_per_forward_pass(self) -> float:
        """New tokens (PAD after EOS included) per forward pass: 1 for `NextToken`, more for speculative."""
        return self.new_ids_BL.shape[1] / max(self.forward_passes, 1)

    def segments(self) -> list[list[Segment]]:
        """Each row's whole sequence (prompt included) unpacked into segments; a cut-off one is ``truncated``."""
        rows = zip(self.sequences_BL.cpu(), self.attention_mask_BL.cpu())
        return [self.layout.unpack(ids_L[mask_L > 0]) for ids_L, mask_L in rows]


class DecodingState:
    """The batch being decoded, its KV cache, guidance and the forward-pass counter (shared by strategies).

    ids/mask/positions live in buffers allocated once (grown by doubling) and filled in place; ``ids_BL``,
    ``mask_BL`` and ``positions_BL`` are views of their first ``length`` columns, valid until the next
    `append` or `truncate`. backend: "auto" runs Llama backbones through `FastLlama` (a static KV cache, same
    math) when supported, "hf" always through the backbone's own forward and ``DynamicCache``, "fast" insists.
    """

    def __init__(
        self,
        model: LoomModel,
        prompts_L: list[np.ndarray],
        sampler: Sampler,
        cfg: CFG | None,
        use_cache: bool,
        backend: str = "auto",
    ) -> None:
        self.model, self.layout, self.sampler, self.cfg, self.use_cache = model, model.layout, sampler, cfg, use_cache
        self.batch_size = len(prompts_L)
        rows = list(prompts_L)
        if cfg is not None:  # the unconditional rows: the condition segments hold only the NULL token
            rows += [self.layout.drop_condition(p, cfg.condition) for p in prompts_L]
        packed = [PackedSequence(r, self.layout.modality_of_id[r]) for r in rows]
        batch = self.layout.pack_batch(packed, padding_side="left")
        device = next(model.parameters()).device
        self.length = self.prompt_length = batch.ids_BL.shape[1]
        self._ids_BT = batch.ids_BL.to(device=device, dtype=torch.long)
        self._mask_BT = batch.attention_mask_BL.to(device=device, dtype=torch.long)
        self._positions_BT = (self._mask_BT.cumsum(-1) - 1).clamp(min=0)
        self._valid_count_B = self._mask_BT.sum(-1)  # the next token's position
        self._padded = bool((self._mask_BT == 0).any())  # else attention needs no padding mask
        self.grammar = [self.layout.state_of(p) for p in prompts_L]
        self.fed = 0  # tokens already in the cache
        self.fast = fast_path(model, backend) if use_cache else None
        if self.fast is not None:
            self.cache: Any = self.fast.new_cache(len(rows), self.length + 1)
        else:
            self.cache = _new_cache(model) if use_cache else None
        self._greedy = bool(sampler.processors) and all(isinstance(p, Greedy) for p in sampler.processors)
        self.forward_passes = 0
        self.sampled_steps = 0
        self.num_guided_steps = 1

    @property
    def device(self) -> torch.device:
        return self._ids_BT.device

    @property
    def ids_BL(self) -> torch.Tensor:
        return self._ids_BT[:, : self.length]

    @property
    def mask_BL(self) -> torch.Tensor:
        return self._mask_BT[:, : self.length]

    @property
    def positions_BL(self) -> torch.Tensor:
        return self._positions_BT[:, : self.length]

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more columns (and cache entries) now rather than growing step by step."""
        capacity = self.length + new_tokens
        if capacity > self._ids_BT.shape[1]:
            buffers = (self._ids_BT, self._mask_BT, self._positions_BT)
            self._ids_BT, self._mask_BT, self._positions_BT = (_grown(b, self.length, capacity) for b in buffers)
        if isinstance(self.cache, KVCache):
            self.cache.reserve(capacity)

    def append(self, tokens_B: torch.Tensor) -> None:
        """Append one token per conditional row (copied to its unconditional twin); tokens after EOS are masked."""
        n = self.length
        if n == self._ids_BT.shape[1]:
            self.reserve(max(n, 16))  # double
        B, tokens_B = self.batch_size, tokens_B.to(self.device)
        ended = [s.ended for s in self.grammar]
        copies = 2 if self.cfg is not None else 1
        if any(ended):
            ended_B = torch.tensor(ended, device=self.device)
            tokens_B = tokens_B.masked_fill(ended_B, self.layout.pad_id)
            valid_B = (~ended_B).long().repeat(copies)
            self._mask_BT[:, n] = valid_B
            self._positions_BT[:, n] = self._valid_count_B
            self._valid_count_B += valid_B
            self._padded = True
        else:
            self._mask_BT[:, n] = 1
            self._positions_BT[:, n] = self._valid_count_B
            self._valid_count_B += 1
        self._ids_BT[:, n].view(copies, B).copy_(tokens_B.expand(copies, B))
        self.length = n + 1
        self.grammar = [self.layout.advance(s, t) for s, t in zip(self.grammar, tokens_B.tolist())]

    def truncate(self, length: int, grammar: list[GrammarState] | None = None) -> None:
        """Drop every token from column ``length`` on, from the batch and the KV cache (speculative decoding).

        grammar: each conditional row's grammar state at ``length`` when the caller kept it (else recomputed).
        """
        self.length = min(self.length, length)
        self._valid_count_B = self.mask_BL.sum(-1)
        if grammar is None:
            rows = zip(self.ids_BL[: self.batch_size].cpu(), self.mask_BL[: self.batch_size].cpu())
            grammar = [self.layout.state_of(ids_L[mask_L > 0]) for ids_L, mask_L in rows]
        self.grammar = list(grammar)
        if self.fed > length:
            self.fed = length
            if self.cache is not None and self.cache.get_seq_length() > length:
                self.cache.crop(length - self.cache.get_seq_length())  # negative: tokens to drop (HF 4.x and 5.x)

    def forward(self) -> torch.Tensor:
        """Run the backbone over the tokens not yet in the cache (all of them without a cache): hidden_BnD."""
        start = self.fed if self.use_cache else 0
        if self.fast is not None:
            valid_BL = self.mask_BL > 0 if self._padded else None
            hidden_BnD = self.fast(self.ids_BL[:, start:], self.cache, start, valid_BL, self.positions_BL[:, start:])
        else:
            hidden_BnD = self.model(
                self.ids_BL[:, start:],
                attention_mask_BL=self.mask_BL,
                position_ids_BL=self.positions_BL[:, start:],
                past_key_values=self.cache,
                use_cache=self.use_cache,
            ).hidden_BLD
        self.fed = self.length
        self.forward_passes += 1
        return hidden_BnD

    def next_logits(self, speaker_B: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """One forward pass; the (guided) logits_BV of each conditional row's next token."""
        hidden_BD = self.forward()[:, -1]
        speakers = speaker_B.tolist() if isinstance(speaker_B, torch.Tensor) else list(speaker_B)
        if self.cfg is not None:
            speakers = speakers * 2
        if len(set(speakers)) == 1:  # the usual step: one head speaks for every row
            linear = self.fast.kernels.linear if self.fast is not None else F.linear
            logits_BV = self.model.logits_for_speaker(hidden_BD, speakers[0], linear)
        else:
            speaker_B1 = torch.tensor(speakers, device=self.device)[:, None]
            logits_BV = self.model.logits_for(hidden_BD[:, None], speaker_B1)[:, 0]
        if self.cfg is None:
            return logits_BV
        cond_BV, uncond_BV = logits_BV[: self.batch_size], logits_BV[self.batch_size :]
        return self.cfg.combine(cond_BV, uncond_BV, self.sampled_steps, self.num_guided_steps)

    def sample(self, logits_BV: torch.Tensor) -> torch.Tensor:
        """ids_B drawn by the sampler (plain greedy: the argmax alone, skipping the processors' masks)."""
        return logits_BV.argmax(-1) if self._greedy else self.sampler(logits_BV)

    def output(self, strategy: str) -> GenerationOutput:
        B = self.batch_size
        return GenerationOutput(
            sequences_BL=self.ids_BL[:B].clone(),
            attention_mask_BL=self.mask_BL[:B].clone(),
            prompt_length=self.prompt_length,
            forward_passes=self.forward_passes,
            sampled_steps=self.sampled_steps,
            strategy=strategy,
            layout=self.layout,
        )


class DecodingStrategy:
    """A plug-in of the decoding loop: ``start`` once, then ``step`` until ``done``."""

    name = "strategy"

    def start(self, state: DecodingState) -> None:
        pass

    def done(self, state: DecodingState) -> bool:
        raise NotImplementedError

    def step(self, state: DecodingState) -> None:
        raise NotImplementedError


class NextToken(DecodingStrategy):
    """Raster next-token decoding: one sampled token per row per forward pass.

    With ``max_new_tokens`` the layout's grammar decides at each step which head speaks (or which token is
    forced); with ``segments`` a script does: per segment its begin token, n sampled codes, its end token, then
    EOS.
    """

    name = "next_token"

    def __init__(self, max_new_tokens: int | None = None, segments: Sequence[tuple[str, int]] | None = None) -> None:
        if (max_new_tokens is None) == (segments is None):
            raise ValueError("NextToken needs exactly one of max_new_tokens or segments=[(modality, n_tokens), ...]")
        self.max_new_tokens = max_new_tokens
        self.segments = list(segments) if segments is not None else None
        self._script: list[tuple[int | None, int]] = []
        self._appended = 0

    def start(self, state: DecodingState) -> None:
        self._appended = 0
        if self.segments is None:
            state.num_guided_steps = max(int(self.max_new_tokens or 1), 1)
            state.reserve(int(self.max_new_tokens or 0))
            return
        if any(s.open != SPECIAL or s.ended for s in state.grammar):
            raise ValueError(
                "generate(segments=...) starts new segments, but a prompt ends inside a segment (or after EOS); "
                "use max_new_tokens to continue an open segment"
            )
        self._script = _script(state.layout, self.segments)
        state.num_guided_steps = max(sum(forced is None for forced, _ in self._script), 1)
        state.reserve(len(self._script))

    def done(self, state: DecodingState) -> bool:
        if self.segments is not None:
            return self._appended >= len(self._script)
        return self._appended >= int(self.max_new_tokens or 0) or all(s.ended for s in state.grammar)

    def step(self, state: DecodingState) -> None:
        layout = state.layout
        if self.segments is not None:
            actions = [self._script[self._appended]] * state.batch_size
        else:
            actions = [layout.next_action(s) for s in state.grammar]
        forced = [f for f, _ in actions]
        if all(f is not None for f in forced):  # nothing to sample: no forward pass, the tokens ride with the next one
            state.append(torch.tensor(forced, device=state.device))
        else:
            speakers = [SPECIAL if f is not None else s for f, s in actions]
            logits_BV = state.next_logits(speakers)
            if self.segments is not None and speakers[0] >= 0:  # a scripted segment holds exactly n codes
                logits_BV[:, layout.end_id(speakers[0])] = float("-inf")
            sampled_B = state.sample(logits_BV)
            state.sampled_steps += 1
            if any(f is not None for f in forced):
                forced_B = torch.tensor([-1 if f is None else f for f in forced], device=state.device)
                sampled_B = torch.where(forced_B >= 0, forced_B, sampled_B)
            state.append(sampled_B)
        self._appended += 1


def _script(layout: VocabularyLayout, segments: Sequence[tuple[str, int]]) -> list[tuple[int | None, int]]:
    script: list[tuple[int | None, int]] = []
    for modality, n in segments:
        i = layout.index(modality)
        fixed = layout.modalities[i].tokens_per_segment
        if fixed is not None and n != fixed:
            raise ValueError(f"segments: {modality!r} holds {fixed} tokens per segment in this layout, not {n}")
        script += [(layout.begin_id(i), SPECIAL)] + [(None, i)] * n + [(layout.end_id(i), SPECIAL)]
    return script + [(layout.eos_id, SPECIAL)]


def generate(
    model: LoomModel,
    prompts: Sequence[Prompt],
    max_new_tokens: int | None = None,
    segments: Sequence[tuple[str, int]] | None = None,
    sampler: Sampler | None = None,
    cfg: CFG | None = None,
    strategy: DecodingStrategy | None = None,
    use_cache: bool = True,
    backend: str = "auto",
) -> GenerationOutput:
    """Decode a batch of prompts.

    prompts: records (lists of segments, packed with BOS and without EOS) or 1-D id sequences of the layout.
    max_new_tokens / segments: how much to generate (see `NextToken`); ignored when ``strategy`` is given.
    sampler: defaults to greedy. cfg: classifier-free guidance (conditional and unconditional rows in one batch).
    use_cache: False recomputes the whole sequence at every step (the reference the cache is tested against).
    backend: "auto" (the lean `FastLlama` path for supported Llama backbones, else HF), "hf" or "fast".
    """
    if strategy is None:
        strategy = NextToken(max_new_tokens=max_new_tokens, segments=segments)
    sampler = sampler if sampler is not None else Sampler([Greedy()])
    sampler.reset()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # lighter than no_grad per op; outputs are cloned out of it
            state = DecodingState(
                model, [_prompt_ids(model.layout, p) for p in prompts], sampler, cfg, use_cache, backend
            )
            strategy.start(state)
            while not strategy.done(state):
                strategy.step(state)
    finally:
        model.train(was_training)
    return state.output(strategy.name)


def _prompt_ids(layout: VocabularyLayout, prompt: Prompt) -> np.ndarray:
    if isinstance(prompt, (torch.Tensor, np.ndarray)) or (len(prompt) and isinstance(prompt[0], (int, np.integer))):
        ids_L = as_numpy(prompt).reshape(-1)
        if ids_L.size and (ids_L.min() < 0 or ids_L.max() >= layout.vocab_size):
            raise ValueError(f"prompt ids must lie in the layout's vocabulary [0, {layout.vocab_size})")
        return ids_L
    return layout.pack(prompt, add_eos=False).ids_L


def _grown(buffer_BT: torch.Tensor, keep: int, capacity: int) -> torch.Tensor:
    grown_BT = buffer_BT.new_zeros(buffer_BT.shape[0], capacity)
    grown_BT[:, :keep] = buffer_BT[:, :keep]
    return grown_BT


def _new_cache(model: LoomModel) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.backbone.config)


__all__ = ["DecodingState", "DecodingStrategy", "GenerationOutput", "NextToken", "generate"]

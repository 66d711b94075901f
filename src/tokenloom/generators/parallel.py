"""Parallel decoding (PAR: Wang et al. 2024, "Parallelized Autoregressive Visual Generation", arXiv:2412.15119):
the first token of every region one at a time, then the tokens at the same place in all regions at once.

    model = ParallelModel(loom, regions=2)                    # the image grid (h, w) cut into 2 x 2 regions
    loss = par_loss(model, ids_BL, attention_mask_BL)        # packed raster rows, as LoomModel.next_token_loss
    out = generate_par(model, prompts, sampler=Sampler([TopK(50)]), cfg=CFG(3.0))
    out.sequences_BL, out.segments(), out.forward_passes    # raster order; passes == n + h*w/n - 1, n = regions**2
    model.save_pretrained("ckpt"); ParallelModel.from_pretrained("ckpt")   # train(model, shards) calls model.loss

Order (`par_order`): the h x w grid is cut into M x M regions of (h/M) x (w/M) tokens (M = ``regions``,
n = M*M). PAR order is place-major: the first place of regions 0..n-1 (regions in raster order), then the
second place of every region, and so on, so the L = h*w codes form k = L/n groups of n. Group 0 (the global
structure) is sampled one token per forward pass, groups 1..k-1 one group per pass.

The stream a model sees (PAR's Fig. 4a), for one image segment:

    <begin:image> g0_0 .. g0_{n-1} T_1 .. T_{n-1} g1_0 .. g1_{n-1} .. g{k-1}_{n-1} <end:image>

T_j are n - 1 learned transition embeddings: inputs only, never predicted. Group 0 is next-token; g1_j is
predicted from the j-th input of the block [g0_{n-1}, T_1 .. T_{n-1}], g{t+1}_j from gt_j. Attention is
block-causal: causal, except that the tokens of one block (the transition block, each parallel group) see each
other, so every prediction of a group sees the whole previous group (PAR's group-wise full attention). RoPE
sees the stream index (the transition slots take positions). With regions=1 this is raster next-token decoding.

`ParallelState` is a `DecodingState` over that stream (per column a transition slot, -1 for tokens, and a block
id); its forward pass embeds the slots and passes the 4-D block mask along with the KV cache (use_cache=False
recomputes the stream: the reference). `ParallelDecoding` writes <begin>, group 0, the slots, a group per pass,
then <end> <eos>; the output holds the codes back in raster order, without the slots. Guidance: every position
of a pass gets the same CFG step (the pass index), as VAR guides a scale.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenloom.generators.decoding import (
    DecodingState,
    DecodingStrategy,
    GenerationOutput,
    Prompt,
    _prompt_ids,
)
from tokenloom.generators.layout import SPECIAL
from tokenloom.generators.model import (
    LoomModel,
    load_checkpoint_weights,
    read_checkpoint_config,
    save_checkpoint_folder,
)
from tokenloom.generators.sampling import CFG, Greedy, Sampler

MODEL_FORMAT = "tokenloom/parallel-model"
NOT_SCORED = -2  # the speaker of a position whose next token the grammar forces (as in LoomModel.speakers)


def par_order(h: int, w: int, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order_L, inverse_L): PAR position i holds raster token order_L[i]; raster token r sits at inverse_L[r].

    regions: M, regions per side. The first M*M entries are each region's first (top-left) token; then come
    groups of M*M tokens, one per region, at the same place in every region.

    >>> par_order(2, 4, 2)[0].tolist()
    [0, 2, 4, 6, 1, 3, 5, 7]
    """
    if regions < 1 or h % regions or w % regions:
        raise ValueError(f"regions={regions} must be >= 1 and divide the grid ({h}, {w}) on both sides")
    raster_hw = torch.arange(h * w).view(h, w)
    order_L = rearrange(raster_hw, "(rh a) (rw b) -> (a b rh rw)", rh=regions, rw=regions)
    return order_L, torch.argsort(order_L)


def raster_to_par(ids_BL: torch.Tensor, h: int, w: int, regions: int) -> torch.Tensor:
    """(..., h*w) codes in raster order -> the same codes in PAR order."""
    return ids_BL[..., par_order(h, w, regions)[0].to(ids_BL.device)]


def par_to_raster(ids_BL: torch.Tensor, h: int, w: int, regions: int) -> torch.Tensor:
    """(..., h*w) codes in PAR order -> raster order (the inverse of `raster_to_par`)."""
    return ids_BL[..., par_order(h, w, regions)[1].to(ids_BL.device)]


def group_attention_mask(block_BL: torch.Tensor, valid_BL: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, 1, L - start, L) bool, True = attend: query i sees key j iff block(j) <= block(i) and j is no padding.

    block_BL: each column's block, its own column index for a causal token. The queries are columns
    [start, L) (the ones not yet cached). Each query also sees itself, so no row is fully masked (SDPA would
    return NaN there, and padding rows feed the next layer's keys).
    """
    key_L = torch.arange(block_BL.shape[1], device=block_BL.device)
    allowed_BnL = (block_BL[:, None, :] <= block_BL[:, start:, None]) & (valid_BL[:, None, :] > 0)
    allowed_BnL |= key_L[None, start:, None] == key_L[None, None, :]
    return allowed_BnL[:, None]


class ParallelModel(nn.Module):
    """A LoomModel plus PAR's n - 1 learned transition embeddings, for one 2-D modality of its layout.

    regions: M, regions per side (M x M regions; PAR-4x is 2, PAR-16x is 4, 1 is raster next-token decoding).
    modality: the layout modality of the codes; its ``shape`` (h, w) must be divisible by ``regions``.
    """

    order_L: torch.Tensor  # buffers: PAR position -> raster index, and back
    inverse_L: torch.Tensor

    def __init__(self, loom: LoomModel, regions: int = 2, modality: str = "image") -> None:
        super().__init__()
        self.loom, self.layout, self.modality = loom, loom.layout, modality
        self.modality_index = self.layout.index(modality)
        shape = self.layout.modalities[self.modality_index].shape
        if shape is None or len(shape) != 2:
            raise ValueError(f"ParallelModel needs a 2-D grid: give ModalityVocab({modality!r}, ..., shape=(h, w))")
        order_L, inverse_L = par_order(*shape, regions)
        self.grid, self.regions = shape, regions
        self.group_size, self.num_tokens = regions * regions, shape[0] * shape[1]
        config, table = loom.backbone.config, loom.embedding.weight
        std = getattr(config, "initializer_range", 0.02)  # drawn like the token embeddings they sit among
        transition_nD = torch.randn(self.group_size - 1, table.shape[1], device=table.device) * std
        self.transition_embed = nn.Parameter(transition_nD.to(table.dtype))
        self.register_buffer("order_L", order_L, persistent=False)
        self.register_buffer("inverse_L", inverse_L, persistent=False)

    @property
    def passes_per_segment(self) -> int:
        """Forward passes per generated segment: group 0 token by token, then one per later group."""
        return self.group_size + self.num_tokens // self.group_size - 1

    def embed(self, ids_BL: torch.Tensor, slot_BL: torch.Tensor) -> torch.Tensor:
        """x_BLD: token embeddings, the transition embedding where ``slot_BL >= 0``."""
        x_BLD = self.loom.embedding(ids_BL)
        if self.group_size == 1:
            return x_BLD
        transition_BLD = self.transition_embed[slot_BL.clamp(min=0)]
        return torch.where(slot_BL[..., None] >= 0, transition_BLD, x_BLD)

    def hidden(
        self,
        ids_BL: torch.Tensor,
        slot_BL: torch.Tensor,
        block_BL: torch.Tensor,
        valid_BL: torch.Tensor,
        positions_BL: torch.Tensor,
        start: int = 0,
        cache: Any = None,
    ) -> torch.Tensor:
        """hidden_BnD of stream columns [start, L); the inputs are (B, L), ``cache`` holds columns [0, start)."""
        x_BnD = self.embed(ids_BL[:, start:], slot_BL[:, start:])
        mask = group_attention_mask(block_BL, valid_BL, start)
        if self.loom.attn_implementation == "eager":  # eager adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=x_BnD.dtype, device=x_BnD.device).masked_fill(
                ~mask, torch.finfo(x_BnD.dtype).min
            )
        out = self.loom(
            attention_mask_BL=mask,
            position_ids_BL=positions_BL[:, start:],
            past_key_values=cache,
            use_cache=cache is not None,
            inputs_embeds_BLD=x_BnD,
        )
        return out.hidden_BLD

    def loss(self, ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss (`training.train` calls it): `par_loss`."""
        return par_loss(self, ids_BL, attention_mask_BL)

    # -- checkpoints: config.json + model.safetensors, the LoomModel's config inside ---------------------
    def config_dict(self) -> dict[str, Any]:
        loom = self.loom.config_dict()
        return {"format": MODEL_FORMAT, "loom": loom, "regions": self.regions, "modality": self.modality}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_checkpoint_folder(directory, self.config_dict(), self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ParallelModel:
        """Rebuild from a `save_pretrained` folder alone."""
        config = read_checkpoint_config(directory, MODEL_FORMAT)
        model = cls(LoomModel.from_config(config["loom"]), regions=config["regions"], modality=config["modality"])
        return load_checkpoint_weights(model, directory).eval()


class Stream(NamedTuple):
    """One row's PAR stream, (S,) each: S columns, the row's L tokens plus n - 1 slots per segment.

    ids_S: tokens (PAD in a slot); slot_S: the transition slot (-1: a token); block_S: the attention block;
    source_S: the column whose hidden state predicts this column's token (-1: none); speaker_S: the head that
    speaks there (``NOT_SCORED`` where the grammar forces the token).
    """

    ids_S: np.ndarray
    slot_S: np.ndarray
    block_S: np.ndarray
    source_S: np.ndarray
    speaker_S: np.ndarray


def par_stream(model: ParallelModel, ids_L: np.ndarray) -> Stream:
    """A packed row in raster order (no padding) as the stream a `ParallelModel` reads (module docstring)."""
    layout, n, hw = model.layout, model.group_size, model.num_tokens
    begin, end = layout.begin_id(model.modality), layout.end_id(model.modality)
    order = model.order_L.cpu().numpy()
    pieces, cursor = [], 0
    for b in np.flatnonzero(ids_L == begin).tolist():
        if b + hw + 1 >= len(ids_L) or ids_L[b + hw + 1] != end:
            raise ValueError(f"par_loss needs complete {model.modality!r} segments ({hw} codes, then the end token)")
        codes = b + 1 + order
        pieces += [np.arange(cursor, b + 1), codes[:n], np.full(n - 1, -1), codes[n:]]
        cursor = b + hw + 1
    raster_S = np.concatenate(pieces + [np.arange(cursor, len(ids_L))])  # raster index per column, -1 for a slot
    real_S, column_S = raster_S >= 0, np.arange(len(raster_S))
    ids_S = np.where(real_S, ids_L[raster_S.clip(0)], layout.pad_id)
    speaker_L = layout.speakers(ids_L, forced=NOT_SCORED)  # the head predicting token t + 1 from token t
    speaker_S = np.where(raster_S > 0, speaker_L[(raster_S - 1).clip(0)], NOT_SCORED)
    slot_S, block_S, source_S = np.full(len(raster_S), -1), column_S.copy(), column_S - 1
    for b in np.flatnonzero(ids_S == begin).tolist():
        blocked = np.arange(b + n, b + n + hw)  # g0_{n-1}, the slots and every later group
        block_S[blocked] = b + n * ((blocked - b) // n)
        slots = np.arange(b + n + 1, b + 2 * n)
        slot_S[slots], source_S[slots] = np.arange(n - 1), -1
        parallel = np.arange(b + 2 * n, b + n + hw)
        source_S[parallel] = parallel - n
    source_S[0] = -1
    return Stream(ids_S, slot_S, block_S, source_S, speaker_S)


def par_loss(model: ParallelModel, ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each sampled token over the PAR stream, in one pass with the block mask.

    ids_BL: right-padded packed rows in raster order (``layout.pack_batch(..., padding_side="right")``), as
    `LoomModel.next_token_loss` takes; their segments of ``model.modality`` are reordered and get the slots.
    Padding, NULL and grammar-forced tokens are not scored. With regions=1 it equals ``next_token_loss``.
    """
    if attention_mask_BL is None:
        attention_mask_BL = torch.ones_like(ids_BL)
    lengths = attention_mask_BL.sum(-1).tolist()
    rows = [par_stream(model, ids_L[: int(n)].cpu().numpy()) for ids_L, n in zip(ids_BL, lengths)]
    stream_lengths = [len(row.ids_S) for row in rows]
    S = max(stream_lengths)

    def padded(field: str, value: int) -> torch.Tensor:  # padding columns: never a source, masked as keys
        stacked = [np.pad(getattr(row, field), (0, S - len(row.ids_S)), constant_values=value) for row in rows]
        return torch.from_numpy(np.stack(stacked)).to(ids_BL.device)

    ids_BS, slot_BS, block_BS = padded("ids_S", model.layout.pad_id), padded("slot_S", -1), padded("block_S", S)
    source_BS, speaker_BS = padded("source_S", -1), padded("speaker_S", NOT_SCORED)
    lengths_B1 = torch.tensor(stream_lengths, device=ids_BL.device)[:, None]
    valid_BS = (torch.arange(S, device=ids_BL.device) < lengths_B1).long()
    positions_BS = (valid_BS.cumsum(-1) - 1).clamp(min=0)
    hidden_BSD = model.hidden(ids_BS, slot_BS, block_BS, valid_BS, positions_BS)
    source_BSD = source_BS.clamp(min=0)[..., None].expand(-1, -1, hidden_BSD.shape[-1])
    logits_BSV = model.loom.logits_for(hidden_BSD.gather(1, source_BSD), speaker_BS)
    scored_BS = (source_BS >= 0) & (speaker_BS != NOT_SCORED) & (ids_BS != model.layout.null_id)
    target_BS = ids_BS.masked_fill(~scored_BS, -100)
    return F.cross_entropy(logits_BSV.flatten(0, 1), target_BS.flatten(), ignore_index=-100)


class ParallelState(DecodingState):
    """A `DecodingState` over the PAR stream: each column also has a transition slot (-1: a token) and a block
    (the same for every row: rows append in lockstep)."""

    def __init__(
        self, model: ParallelModel, prompts_L: list[np.ndarray], sampler: Sampler, cfg: CFG | None, use_cache: bool
    ) -> None:
        # the HF backend: the fast Llama path embeds ids and masks causally, the stream needs slots and blocks
        super().__init__(model.loom, prompts_L, sampler, cfg, use_cache, backend="hf")
        self.par = model
        self.slot_L = torch.full((self.prompt_length,), -1, dtype=torch.long, device=self.device)
        self.block_L = torch.arange(self.prompt_length, device=self.device)

    def append(self, tokens_B: torch.Tensor, slot: int = -1, block: int | None = None) -> None:
        """Append a token per row to ``block`` (default: a block of its own); a transition slot when ``slot >= 0``
        (``tokens_B`` are then placeholders, which the grammar never sees)."""
        grammar = self.grammar
        super().append(tokens_B)
        if slot >= 0:
            self.grammar = grammar
        column = self.ids_BL.shape[1] - 1
        self.slot_L = torch.cat([self.slot_L, self.slot_L.new_tensor([slot])])
        self.block_L = torch.cat([self.block_L, self.block_L.new_tensor([column if block is None else block])])

    def forward(self) -> torch.Tensor:
        """Run the backbone over the columns not yet in the cache (all of them without a cache): hidden_BnD."""
        start = self.fed if self.use_cache else 0
        rows = self.ids_BL.shape[0]
        slot_BL, block_BL = self.slot_L.expand(rows, -1), self.block_L.expand(rows, -1)
        hidden_BnD = self.par.hidden(
            self.ids_BL, slot_BL, block_BL, self.mask_BL, self.positions_BL, start=start, cache=self.cache
        )
        self.fed = self.ids_BL.shape[1]
        self.forward_passes += 1
        return hidden_BnD

    def group_logits(self, width: int) -> torch.Tensor:
        """One forward pass; the (guided) logits_BnV of the next ``width`` codes, from the last ``width`` columns."""
        hidden_BnD = self.forward()[:, -width:]
        speaker_Bn = torch.full(hidden_BnD.shape[:2], self.par.modality_index, device=self.device)
        logits_BnV = self.model.logits_for(hidden_BnD, speaker_Bn)
        if self.cfg is None:
            return logits_BnV
        cond_BnV, uncond_BnV = logits_BnV[: self.batch_size], logits_BnV[self.batch_size :]
        return self.cfg.combine(cond_BnV, uncond_BnV, self.sampled_steps, self.num_guided_steps)

    def output(self, strategy: str) -> GenerationOutput:
        """The rows without the slots, the segment `ParallelDecoding` wrote after the prompt in raster order."""
        out = super().output(strategy)
        keep_L = (self.slot_L < 0).to(out.sequences_BL.device)
        ids_BL, mask_BL = out.sequences_BL[:, keep_L], out.attention_mask_BL[:, keep_L]
        first, stop = self.prompt_length + 1, self.prompt_length + 1 + self.par.num_tokens
        if ids_BL.shape[1] >= stop:
            ids_BL[:, first:stop] = ids_BL[:, first:stop][:, self.par.inverse_L.to(ids_BL.device)]
        return dataclasses.replace(out, sequences_BL=ids_BL, attention_mask_BL=mask_BL)


class ParallelDecoding(DecodingStrategy):
    """PAR order as a decoding plug-in over a `ParallelState` (`generate_par` builds one): <begin>, group 0 one
    code per forward pass, the transition slots, then one group of n = regions**2 codes per pass, <end>, <eos>."""

    name = "parallel"

    def start(self, state: DecodingState) -> None:
        if not isinstance(state, ParallelState):
            raise TypeError("ParallelDecoding runs on a ParallelState: call generate_par(model, prompts, ...)")
        if any(s.open != SPECIAL or s.ended for s in state.grammar):
            raise ValueError("generate_par starts a new segment, but a prompt ends inside a segment (or after EOS)")
        self._written = -1  # codes written so far; -1: not even the begin token
        self._num_tokens = state.par.num_tokens
        state.num_guided_steps = state.par.passes_per_segment

    def done(self, state: DecodingState) -> bool:
        return self._written == self._num_tokens

    def step(self, state: DecodingState) -> None:
        assert isinstance(state, ParallelState)  # start checked it
        par, layout, B = state.par, state.layout, state.batch_size
        n = par.group_size

        def forced(token: int) -> torch.Tensor:
            return torch.full((B,), token, dtype=torch.long, device=state.device)

        if self._written < 0:  # forced: rides along with the first pass
            state.append(forced(layout.begin_id(par.modality_index)))
            self._written = 0
        if self._written == n and n > 1:  # the slots join g0_{n-1} in the transition block
            transition_block = state.ids_BL.shape[1] - 1
            for slot in range(n - 1):
                state.append(forced(layout.pad_id), slot=slot, block=transition_block)
        width = 1 if self._written < n else n
        block = None if width == 1 else state.ids_BL.shape[1]
        logits_BnV = state.group_logits(width)
        logits_BnV[..., layout.end_id(par.modality_index)] = float("-inf")  # a segment holds exactly h*w codes
        ids_Bn = state.sampler(logits_BnV.flatten(0, 1)).view(B, width)
        state.sampled_steps += 1
        for j in range(width):
            state.append(ids_Bn[:, j], block=block)
        self._written += width
        if self._written == par.num_tokens:
            state.append(forced(layout.end_id(par.modality_index)))
            state.append(forced(layout.eos_id))


def generate_par(
    model: ParallelModel,
    prompts: Sequence[Prompt],
    sampler: Sampler | None = None,
    cfg: CFG | None = None,
    use_cache: bool = True,
) -> GenerationOutput:
    """Decode one segment of ``model.modality`` per prompt in PAR order (``model.passes_per_segment`` forward passes).

    prompts: as for `generate` (records, or 1-D id sequences). sampler: defaults to greedy, applied to every
    code of a group. cfg: guidance with the unconditional rows in the same batch; step = the pass index.
    use_cache: False recomputes the whole stream at every pass with the block mask (same result).
    """
    sampler = sampler if sampler is not None else Sampler([Greedy()])
    sampler.reset()
    strategy, was_training = ParallelDecoding(), model.training
    model.eval()
    try:
        with torch.inference_mode():
            state = ParallelState(model, [_prompt_ids(model.layout, p) for p in prompts], sampler, cfg, use_cache)
            strategy.start(state)
            while not strategy.done(state):
                strategy.step(state)
    finally:
        model.train(was_training)
    return state.output(strategy.name)


__all__ = [
    "ParallelDecoding",
    "ParallelModel",
    "ParallelState",
    "Stream",
    "generate_par",
    "group_attention_mask",
    "par_loss",
    "par_order",
    "par_stream",
    "par_to_raster",
    "raster_to_par",
]

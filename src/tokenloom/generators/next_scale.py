"""Next-scale prediction (VAR: Tian et al. 2024, "Visual Autoregressive Modeling", arXiv:2404.02905) on the
LoomModel backbone: one forward pass per scale, every token of a scale sampled at once.

    model = NextScaleModel.from_tokenizer(loom, tokenizer)            # tokenizer: image/multiscale
    loss = next_scale_loss(model, ids, labels_B, tokenizer)           # ids: [(B, s*s)] per scale
    out = generate_next_scale(model, tokenizer, labels_B, Sampler([TopK(600)]), CFG(2.5, schedule="linear"))
    out.ids, out.ids_BL, out.f_hat_BChw, out.forward_passes            # forward_passes == len(scales)
    model.save_pretrained("ckpt"); NextScaleModel.from_pretrained("ckpt", tokenizer=tokenizer)

``model.loss(ids_BL, mask_BL)`` reads packed rows (``<bos> <begin:label> y <end:label> <begin:image> codes...``,
the label NULL where condition dropout hit), so `training.train` trains a next-scale model over the same token
shards as a next-token one; it needs the tokenizer attached (``from_tokenizer`` or ``attach_tokenizer``).

The sequence is L = sum(s*s) tokens, small scale first. Scale 0's inputs are the condition's start token
(the shared embedding of its label id, NULL for the unconditional rows) repeated s_0**2 times; scale k > 0's
inputs are the tokenizer's accumulated f_hat after scale k - 1, area-downsampled to s_k x s_k
(``next_scale_input``), projected to the width D by ``word_embed``. Every input also gets a level (scale)
embedding and a learned position embedding within its scale (VAR's ``pos_1LC``); RoPE sees the flat index.
Attention is block-causal (VAR's ``attn_bias_for_masking``): a token of scale k sees every token of scales
<= k. The hidden state at scale k's tokens is scored by the image head and predicts scale k's ids.

Decoding feeds each scale's chunk to HF's ``DynamicCache`` with a custom 4-D mask (HF passes those through):
a chunk sees the whole cache and itself. ``use_cache=False`` recomputes the prefix with the block-causal mask
at every scale (the reference the cache is tested against). Guidance follows VAR: conditional rows [0, B) and
unconditional rows [B, 2B) share each sampled scale, and ``CFG(schedule="linear")`` ramps from 1 at the first
scale to ``scale`` at the last (VAR's ``cfg=c`` is our ``CFG(1 + c, schedule="linear")``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from tokenloom.generators.fast_llama import fast_path
from tokenloom.generators.layout import VocabularyLayout
from tokenloom.generators.model import (
    LoomModel,
    load_checkpoint_weights,
    read_checkpoint_config,
    save_checkpoint_folder,
)
from tokenloom.generators.sampling import CFG, Greedy, Sampler

MODEL_FORMAT = "tokenloom/next-scale-model"


def scale_levels(scales: Sequence[int]) -> torch.Tensor:
    """(L,) the scale index of each token of the schedule: scales (1, 2) -> [0, 1, 1, 1, 1]."""
    return torch.cat([torch.full((s * s,), si, dtype=torch.long) for si, s in enumerate(scales)])


def block_causal_mask(scales: Sequence[int]) -> torch.Tensor:
    """(L, L) bool, True = attend: query i sees key j iff scale(j) <= scale(i)."""
    level_L = scale_levels(scales)
    return level_L[None, :] <= level_L[:, None]


@dataclass
class NextScaleOutput:
    """ids: per scale (B, s*s) local image codes; f_hat_BChw: the tokenizer's accumulated features."""

    ids: list[torch.Tensor]
    f_hat_BChw: torch.Tensor
    forward_passes: int
    layout: VocabularyLayout
    modality: str = "image"
    seconds: float = 0.0
    strategy: str = "next_scale"

    @property
    def ids_BL(self) -> torch.Tensor:
        """(B, L) local codes, the scales concatenated small to large (the tokenizer's column layout)."""
        return torch.cat(self.ids, dim=1)

    @property
    def layout_ids_BL(self) -> torch.Tensor:
        """(B, L) the same codes as ids of the shared vocabulary (inside the modality's range)."""
        return self.ids_BL + self.layout.range(self.modality)[0]


class NextScaleModel(nn.Module):
    """A LoomModel plus VAR's input side: ``word_embed`` (C -> D), a level embedding and per-scale positions.

    condition: the layout modality whose ids start the sequence (class labels); its NULL twin is the
        unconditional start token. modality: the layout modality of the image codes (size == codebook size).
    """

    def __init__(
        self,
        loom: LoomModel,
        scales: Sequence[int],
        feature_dim: int,
        modality: str = "image",
        condition: str = "label",
    ) -> None:
        super().__init__()
        self.loom, self.layout = loom, loom.layout
        self.scales = [int(s) for s in scales]
        self.modality, self.condition = modality, condition
        self.modality_index = self.layout.index(modality)
        self.layout.index(condition)  # a missing condition modality fails here, naming the layout's
        width = loom.backbone.config.hidden_size
        self.word_embed = nn.Linear(feature_dim, width)
        self.level_embed = nn.Embedding(len(self.scales), width)
        self.position_embed = nn.Parameter(torch.randn(sum(s * s for s in self.scales), width) * 0.02)
        self.register_buffer("level_L", scale_levels(self.scales), persistent=False)
        self.register_buffer("mask_LL", block_causal_mask(self.scales), persistent=False)
        ends = torch.tensor([s * s for s in self.scales]).cumsum(0).tolist()
        self.begin_ends = list(zip([0] + ends[:-1], ends))

    @classmethod
    def from_tokenizer(cls, loom: LoomModel, tokenizer: Any, **options: Any) -> NextScaleModel:
        quantizer = _quantizer(tokenizer)
        size = loom.layout.modalities[loom.layout.index(options.get("modality", "image"))].size
        if size != quantizer.codebook_size:
            raise ValueError(f"the layout's image range holds {size} codes, the tokenizer {quantizer.codebook_size}")
        model = cls(loom, quantizer.scales, quantizer.dim, **options)
        return model.attach_tokenizer(tokenizer)

    def attach_tokenizer(self, tokenizer: Any) -> NextScaleModel:
        """Keep the (frozen) multi-scale tokenizer for `loss`; it is not a submodule: not saved, not trained."""
        quantizer = _quantizer(tokenizer)
        if list(quantizer.scales) != self.scales:
            raise ValueError(f"the tokenizer's scales {list(quantizer.scales)} differ from the model's {self.scales}")
        self.__dict__["tokenizer"] = tokenizer
        return self

    def loss(self, ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None) -> torch.Tensor:
        """`next_scale_loss` over packed rows (the image codes of each row, its label or NULL)."""
        tokenizer = self.__dict__.get("tokenizer")
        if tokenizer is None:
            raise RuntimeError("NextScaleModel.loss needs its tokenizer: call model.attach_tokenizer(tokenizer)")
        modality_BL = torch.from_numpy(self.layout.modality_of_id).to(ids_BL.device)[ids_BL]
        image_BL = modality_BL == self.modality_index
        length = self.begin_ends[-1][1]
        if not (image_BL.sum(1) == length).all():
            raise ValueError(f"every row needs one {self.modality!r} segment of {length} codes for scales {self.scales}")
        lo = self.layout.range(self.modality)[0]
        codes_BL = ids_BL[image_BL].view(-1, length) - lo
        label_BL = modality_BL == self.layout.index(self.condition)
        has_label_B = label_BL.any(1)
        first_B = label_BL.float().argmax(1)
        labels_B = ids_BL.gather(1, first_B[:, None])[:, 0] - self.layout.range(self.condition)[0]
        labels_B = labels_B.masked_fill(~has_label_B, -1)  # a NULL (dropped) condition
        return next_scale_loss(self, codes_BL.split([s * s for s in self.scales], dim=1), labels_B, tokenizer)

    # -- checkpoints: config.json + model.safetensors, the LoomModel's config inside ---------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "loom": self.loom.config_dict(),
            "scales": self.scales,
            "feature_dim": self.word_embed.in_features,
            "modality": self.modality,
            "condition": self.condition,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_checkpoint_folder(directory, self.config_dict(), self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None) -> NextScaleModel:
        """Rebuild from a `save_pretrained` folder; ``tokenizer`` (optional) is attached for `loss`."""
        config = read_checkpoint_config(directory, MODEL_FORMAT)
        loom = LoomModel.from_config(config["loom"])
        model = cls(loom, config["scales"], config["feature_dim"], modality=config["modality"], condition=config["condition"])
        load_checkpoint_weights(model, directory)
        if tokenizer is not None:
            model.attach_tokenizer(tokenizer)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.position_embed.device

    def condition_ids(self, labels: Any, batch_size: int | None = None) -> torch.Tensor:
        """Labels (B,) -> start-token ids of the layout; a label < 0 (or ``labels=None``) is the NULL token."""
        if labels is None:
            return torch.full((batch_size or 1,), self.layout.null_id, dtype=torch.long, device=self.device)
        labels_B = torch.as_tensor(labels, dtype=torch.long, device=self.device).reshape(-1)
        lo, hi = self.layout.range(self.condition)
        if (labels_B >= hi - lo).any():
            raise ValueError(f"labels must lie in [0, {hi - lo}) for the {self.condition!r} range (or < 0 for NULL)")
        return torch.where(labels_B < 0, self.layout.null_id, labels_B + lo)

    def embed(self, scale_index: int, condition_B: torch.Tensor, features_BlC: torch.Tensor | None) -> torch.Tensor:
        """Inputs (B, l, D) of the scales from ``scale_index`` on: the start tokens for scale 0 (then
        ``features_BlC`` covers the scales after it), or projected features for a later scale. Every input
        also gets the condition's embedding: VAR conditions every block on the class (AdaLN); adding it to
        every input is our lighter way to keep the class in reach of each token."""
        start = self.begin_ends[scale_index][0]
        condition_BD = self.loom.embedding(condition_B)
        chunks = []
        if scale_index == 0:
            chunks.append(repeat(condition_BD, "b d -> b l d", l=self.begin_ends[0][1]))
        if features_BlC is not None:
            chunks.append(self.word_embed(features_BlC.to(self.word_embed.weight.dtype)))
        x_BlD = torch.cat(chunks, dim=1)
        stop = start + x_BlD.shape[1]
        x_BlD = x_BlD + condition_BD[:, None]
        return x_BlD + self.level_embed(self.level_L[start:stop]) + self.position_embed[start:stop]

    def hidden(self, x_BnD: torch.Tensor, start: int, stop: int, cache: Any = None) -> torch.Tensor:
        """The backbone over tokens [start, stop) whose inputs are ``x_BnD`` (the cache holds [0, start))."""
        B, n = x_BnD.shape[:2]
        allowed_1nk = self.mask_LL[start:stop, :stop][None, None]
        mask = allowed_1nk.expand(B, 1, n, stop)
        if self.loom.attn_implementation == "eager":  # eager adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=x_BnD.dtype, device=x_BnD.device).masked_fill(
                ~mask, torch.finfo(x_BnD.dtype).min
            )
        positions_Bn = torch.arange(start, stop, device=x_BnD.device).expand(B, n)
        out = self.loom(
            attention_mask_BL=mask,
            position_ids_BL=positions_Bn,
            past_key_values=cache,
            use_cache=cache is not None,
            inputs_embeds_BLD=x_BnD,
        )
        return out.hidden_BLD

    def image_logits(self, hidden_BlD: torch.Tensor) -> torch.Tensor:
        """(B, l, V) logits over the local image codes: the image head alone speaks, as in ``logits_for``."""
        if self.loom.shared_head:
            lo, hi = self.layout.range(self.modality)
            return self.loom.head(hidden_BlD)[..., lo:hi].float()
        return self.loom.heads[self.modality](hidden_BlD).float()


def next_scale_loss(
    model: NextScaleModel,
    ids_per_scale: Sequence[torch.Tensor],
    labels: Any,
    tokenizer: Any,
    condition_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Teacher-forced cross-entropy over all L tokens in one pass with the block-causal mask.

    ids_per_scale: [(B, s*s)] local codes per scale; labels (B,) (< 0: NULL); condition_dropout: the chance a
    row's label becomes NULL (VAR's cond_drop_rate 0.1), so the same model serves as the unconditional one.
    """
    ids = [torch.as_tensor(i, device=model.device).long() for i in ids_per_scale]
    if len(ids) != len(model.scales):
        raise ValueError(f"next_scale_loss needs ids for all {len(model.scales)} scales {model.scales}, got {len(ids)}")
    B = ids[0].shape[0]
    condition_B = model.condition_ids(labels).expand(B)
    if condition_dropout > 0:
        drop_B = torch.rand(B, generator=generator, device=condition_B.device) < condition_dropout
        condition_B = condition_B.masked_fill(drop_B, model.layout.null_id)
    with torch.no_grad():
        features_BlC = _quantizer(tokenizer).next_scale_input(ids)  # (B, L - s_0**2, C)
    x_BLD = model.embed(0, condition_B, features_BlC)
    L = x_BLD.shape[1]
    logits_BLV = model.image_logits(model.hidden(x_BLD, 0, L))
    return F.cross_entropy(logits_BLV.flatten(0, 1), torch.cat(ids, dim=1).flatten())


@torch.no_grad()
def generate_next_scale(
    model: NextScaleModel,
    tokenizer: Any,
    labels: Any,
    sampler: Sampler | None = None,
    cfg: CFG | None = None,
    use_cache: bool = True,
    backend: str = "auto",
) -> NextScaleOutput:
    """Sample one image per label, a whole scale per forward pass (``forward_passes == len(scales)``).

    labels: (B,) class ids (< 0: unconditional). sampler: defaults to greedy, applied to each token of a scale.
    cfg: guidance with the unconditional (NULL) rows in the same batch; step = the scale index.
    use_cache: False recomputes the whole prefix at each scale (block-causal mask, same result).
    backend: "auto" runs a supported Llama backbone through `FastLlama` (a scale's chunk attends to the cache
        and to itself both ways: the block-causal rule), "hf" through HF's forward and ``DynamicCache``.
    """
    quantizer = _quantizer(tokenizer)
    if list(quantizer.scales) != model.scales:
        raise ValueError(f"the tokenizer's scales {list(quantizer.scales)} differ from the model's {model.scales}")
    sampler = sampler if sampler is not None else Sampler([Greedy()])
    sampler.reset()
    began, was_training = time.perf_counter(), model.training
    model.eval()
    try:
        condition_B = model.condition_ids(labels)
        B = condition_B.shape[0]
        if cfg is not None:
            condition_B = torch.cat([condition_B, torch.full_like(condition_B, model.layout.null_id)])
        fast = fast_path(model.loom, backend) if use_cache else None
        if fast is not None:
            cache: Any = fast.new_cache(condition_B.shape[0], model.begin_ends[-1][1])
        else:
            cache = _new_cache(model.loom) if use_cache else None
        S, size = len(model.scales), model.scales[-1]
        f_hat_BChw = torch.zeros(B, quantizer.dim, size, size, device=model.device)
        inputs = [model.embed(0, condition_B, None)]  # per scale: (B or 2B, s*s, D)
        ids: list[torch.Tensor] = []
        passes = 0
        for si, (start, stop) in enumerate(model.begin_ends):
            x_BnD = inputs[-1] if use_cache else torch.cat(inputs, dim=1)
            if fast is not None:
                positions_Bn = torch.arange(start, stop, device=x_BnD.device).expand(x_BnD.shape[0], -1)
                hidden_BlD = fast(None, cache, start, None, positions_Bn, inputs_embeds_BLD=x_BnD, causal=False)
            else:
                hidden_BlD = model.hidden(x_BnD, start if use_cache else 0, stop, cache)[:, start - stop :]
            passes += 1
            logits_BlV = model.image_logits(hidden_BlD)
            if cfg is not None:
                logits_BlV = cfg.combine(logits_BlV[:B], logits_BlV[B:], si, S)
            ids_Bl = sampler(logits_BlV.flatten(0, 1)).view(B, stop - start)
            ids.append(ids_Bl)
            f_hat_BChw, next_BChw = quantizer.add_scale(f_hat_BChw, si, ids_Bl)
            if si < S - 1:
                features_BlC = rearrange(next_BChw, "b c h w -> b (h w) c")
                if cfg is not None:  # the unconditional rows continue from the same sampled scale
                    features_BlC = features_BlC.repeat(2, 1, 1)
                inputs.append(model.embed(si + 1, condition_B, features_BlC))
    finally:
        model.train(was_training)
    return NextScaleOutput(
        ids=ids,
        f_hat_BChw=f_hat_BChw,
        forward_passes=passes,
        layout=model.layout,
        modality=model.modality,
        seconds=time.perf_counter() - began,
    )


def _quantizer(tokenizer: Any) -> Any:
    """The multi-scale quantizer of an ``image/multiscale`` tokenizer (or the quantizer itself)."""
    quantizer = getattr(tokenizer, "quantizer", tokenizer)
    if not all(hasattr(quantizer, name) for name in ("scales", "add_scale", "next_scale_input")):
        raise TypeError(f"{type(tokenizer).__name__} is not a multi-scale tokenizer: use 'image/multiscale'")
    return quantizer


def _new_cache(loom: LoomModel) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=loom.backbone.config)


__all__ = ["NextScaleModel", "NextScaleOutput", "block_causal_mask", "generate_next_scale", "next_scale_loss", "scale_levels"]

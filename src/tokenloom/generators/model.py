"""The shared AR transformer: an HF decoder backbone with modality-specific heads over one vocabulary layout.

Modality-specific heads follow Orthus (Kou et al., 2024, arXiv:2412.00127) and Mixture-of-Transformers
(Liang et al., 2024, arXiv:2411.04996): each head scores only its own modality's codes, and the layout says
which head speaks at each position, so a head can never emit another modality's ids.

    hidden_BLD = model(ids_BL, attention_mask_BL, position_ids_BL, past_key_values).hidden_BLD
    logits_BLV = model.logits_for(hidden_BLD, speaker_BL)   # -inf outside what speaker_BL may emit
    loss = model.next_token_loss(ids_BL, attention_mask_BL)

The backbone is used through ``inputs_embeds``: its input embedding is the shared token embedding over the whole
layout vocabulary (resized to it), and next-scale strategies may feed their own embeddings instead.
A checkpoint is a folder with config.json (layout, backbone config, head options) and model.safetensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenloom.generators.attention import check_attention
from tokenloom.generators.layout import VocabularyLayout

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FORMAT = "tokenloom/loom-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class LoomOutput:
    hidden_BLD: torch.Tensor
    past_key_values: Any = None


class LoomModel(nn.Module):
    """Backbone + heads over a `VocabularyLayout`.

    backbone: a config dict (``{"model_type": "llama", "hidden_size": 64, ...}``), an HF ``PretrainedConfig``,
        or an already built HF base model (see `from_backbone`). Its vocabulary is set to the layout's.
    shared_head: one full-vocabulary Linear instead of per-modality heads (still masked by the layout).
    attn_implementation: "sdpa" (default), "eager", or "xformers" (CUDA with ``pip install 'tokenloom[gpu]'``).
    """

    def __init__(
        self,
        layout: VocabularyLayout,
        backbone: Mapping[str, Any] | Any,
        shared_head: bool = False,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.layout = layout
        self.shared_head = shared_head
        self.attn_implementation = check_attention(attn_implementation)
        self.backbone = _build_backbone(backbone, layout, self.attn_implementation)
        width = self.backbone.config.hidden_size
        if shared_head:
            self.head = nn.Linear(width, layout.vocab_size, bias=False)
        else:
            self.heads = nn.ModuleDict({m.name: nn.Linear(width, m.size, bias=False) for m in layout.modalities})
            self.special_head = nn.Linear(width, layout.num_specials, bias=False)
        self.register_buffer("allowed_table", layout.allowed_table(), persistent=False)  # (M + 1, V)

    @classmethod
    def from_backbone(
        cls,
        path: str | os.PathLike,
        layout: VocabularyLayout,
        shared_head: bool = False,
        attn_implementation: str = "sdpa",
    ) -> LoomModel:
        """A backbone loaded from a local HF folder (no download); fresh heads, embeddings resized to the layout."""
        from transformers import AutoModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"backbone path {path!r} is not a folder holding a saved HF model")
        attn_implementation = check_attention(attn_implementation)
        backbone = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn_implementation)
        return cls(layout, backbone, shared_head=shared_head, attn_implementation=attn_implementation)

    @property
    def embedding(self) -> nn.Embedding:
        """The shared token embedding over the layout's whole vocabulary."""
        return self.backbone.get_input_embeddings()

    # -- the forward pass ---------------------------------------------------------------------------
    def forward(
        self,
        ids_BL: torch.Tensor | None = None,
        attention_mask_BL: torch.Tensor | None = None,
        position_ids_BL: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        inputs_embeds_BLD: torch.Tensor | None = None,
    ) -> LoomOutput:
        """Hidden states of the backbone. ``attention_mask_BL`` covers cached + new tokens (1 = attend)."""
        if inputs_embeds_BLD is None:
            if ids_BL is None:
                raise ValueError("LoomModel.forward needs ids_BL or inputs_embeds_BLD")
            inputs_embeds_BLD = self.embedding(ids_BL)
        B, L = inputs_embeds_BLD.shape[:2]
        if attention_mask_BL is None:  # always pass a 2D mask: HF reads a mask-less batch as packed sequences
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            attention_mask_BL = torch.ones(B, past + L, dtype=torch.long, device=inputs_embeds_BLD.device)
        if position_ids_BL is None:
            position_ids_BL = (attention_mask_BL.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]
        out = self.backbone(
            inputs_embeds=inputs_embeds_BLD,
            attention_mask=attention_mask_BL,
            position_ids=position_ids_BL,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        return LoomOutput(out.last_hidden_state, out.past_key_values if use_cache else None)

    def logits_for(self, hidden_BLD: torch.Tensor, speaker_BL: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits_BLV, -inf outside what the speaking modality may emit at each position.

        speaker_BL: the modality index whose head speaks (-1 the special-token head; -2, a position whose next
        token the grammar forces, is scored like -1). Only the heads of the speakers present run.
        """
        speaker_BL = speaker_BL.clamp(min=-1)
        allowed_BLV = self.allowed_table[speaker_BL + 1]
        if self.shared_head:
            return self.head(hidden_BLD).float().masked_fill(~allowed_BLV, float("-inf"))
        logits_BLV = hidden_BLD.new_full((*hidden_BLD.shape[:2], self.layout.vocab_size), float("-inf"))
        logits_BLV = logits_BLV.float()
        specials = self.layout.num_specials
        variable = {i for i, m in enumerate(self.layout.modalities) if m.tokens_per_segment is None}
        for speaker in torch.unique(speaker_BL).tolist():
            where_BL = speaker_BL == speaker
            hidden_ND = hidden_BLD[where_BL]
            rows_NV = logits_BLV[where_BL]
            if speaker == -1 or speaker in variable:  # a variable-length segment's end token comes from here
                rows_NV[:, :specials] = self.special_head(hidden_ND).float()
            if speaker >= 0:
                lo, hi = self.layout.range(speaker)
                rows_NV[:, lo:hi] = self.heads[self.layout.names[speaker]](hidden_ND).float()
            logits_BLV[where_BL] = rows_NV
        return logits_BLV.masked_fill(~allowed_BLV, float("-inf"))

    def logits_for_speaker(
        self, hidden_ND: torch.Tensor, speaker: int, linear: Callable[..., torch.Tensor] = F.linear
    ) -> torch.Tensor:
        """`logits_for` when one head speaks for every row (a decoding step's usual case): logits_NV, the same
        values in a handful of ops (no per-speaker gather and scatter).

        linear: ``(x, weight, bias) -> x @ weight.T + bias`` for Linear heads (the fast decoding path passes its
            own kernel); any other head module is called as it is.
        """

        def run(head: nn.Module) -> torch.Tensor:
            return linear(hidden_ND, head.weight, head.bias) if type(head) is nn.Linear else head(hidden_ND)

        speaker = max(int(speaker), -1)
        blocked_V = ~self.allowed_table[speaker + 1]
        if self.shared_head:
            return run(self.head).float().masked_fill_(blocked_V, float("-inf"))
        logits_NV = hidden_ND.new_full((hidden_ND.shape[0], self.layout.vocab_size), float("-inf"), dtype=torch.float)
        if speaker == -1 or self.layout.modalities[speaker].tokens_per_segment is None:
            logits_NV[:, : self.layout.num_specials] = run(self.special_head)
        if speaker >= 0:
            lo, hi = self.layout.range(speaker)
            logits_NV[:, lo:hi] = run(self.heads[self.layout.names[speaker]])
        return logits_NV.masked_fill_(blocked_V, float("-inf"))

    def speakers(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """(B, L) the head that predicts token t + 1 from position t (-2 where the grammar forces it)."""
        rows = [torch.from_numpy(self.layout.speakers(row, forced=-2)) for row in ids_BL.cpu()]
        return torch.stack(rows).to(ids_BL.device) if rows else ids_BL.new_zeros(ids_BL.shape)

    def next_token_loss(self, ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of each sampled token (padding, NULL and grammar-forced tokens are not scored).

        Expects right-padded rows (``layout.pack_batch(..., padding_side="right")``).
        """
        if attention_mask_BL is None:
            attention_mask_BL = torch.ones_like(ids_BL)
        hidden_BLD = self(ids_BL, attention_mask_BL).hidden_BLD
        speaker_BL = self.speakers(ids_BL)
        logits_BLV = self.logits_for(hidden_BLD[:, :-1], speaker_BL[:, :-1])
        target_BL = ids_BL[:, 1:]
        scored_BL = (attention_mask_BL[:, 1:] > 0) & (target_BL != self.layout.null_id) & (speaker_BL[:, :-1] != -2)
        target_BL = target_BL.masked_fill(~scored_BL, -100)
        return F.cross_entropy(logits_BLV.flatten(0, 1), target_BL.flatten(), ignore_index=-100)

    def loss(self, ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss (`training.train` calls it): here `next_token_loss`."""
        return self.next_token_loss(ids_BL, attention_mask_BL)

    # -- checkpoints --------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "layout": self.layout.to_dict(),
            "backbone": self.backbone.config.to_dict(),
            "shared_head": self.shared_head,
            "attn_implementation": self.attn_implementation,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_checkpoint_folder(directory, self.config_dict(), self)

    @classmethod
    def from_config(cls, config: dict[str, Any], attn_implementation: str | None = None) -> LoomModel:
        """A fresh model (random weights) from `config_dict` output."""
        return cls(
            VocabularyLayout.from_dict(config["layout"]),
            config["backbone"],
            shared_head=config["shared_head"],
            attn_implementation=attn_implementation or config["attn_implementation"],
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, attn_implementation: str | None = None) -> LoomModel:
        """Rebuild from a `save_pretrained` folder alone; ``attn_implementation`` overrides the saved one."""
        model = cls.from_config(read_checkpoint_config(directory, MODEL_FORMAT), attn_implementation)
        return load_checkpoint_weights(model, directory).eval()


# -- checkpoint folders: config.json + model.safetensors (never pickle), shared by the generator models ---------
def save_checkpoint_folder(directory: str | os.PathLike, config: dict[str, Any], module: nn.Module) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, os.path.join(directory, WEIGHTS_NAME))


def read_checkpoint_config(directory: str | os.PathLike, expected_format: str) -> dict[str, Any]:
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: is {os.fspath(directory)!r} a save_pretrained folder?")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("format") != expected_format:
        raise ValueError(f"{config_path} has format={config.get('format')!r}, not {expected_format!r}")
    return config


def load_checkpoint_weights(module: nn.Module, directory: str | os.PathLike) -> Any:
    """Load model.safetensors into ``module`` (strict) and return it."""
    from safetensors.torch import load_file

    module.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME)), strict=True)
    return module


def _build_backbone(backbone: Any, layout: VocabularyLayout, attn_implementation: str) -> nn.Module:
    from transformers import AutoConfig, AutoModel, PretrainedConfig

    if isinstance(backbone, nn.Module):
        if backbone.get_input_embeddings().num_embeddings != layout.vocab_size:
            backbone.resize_token_embeddings(layout.vocab_size)
        backbone.config.pad_token_id = layout.pad_id
        return backbone
    if isinstance(backbone, Mapping):
        values = dict(backbone)
        if "model_type" not in values:
            raise ValueError("the backbone config dict needs a 'model_type' (e.g. 'llama') to pick the HF class")
        values.update(vocab_size=layout.vocab_size, pad_token_id=layout.pad_id)
        values.update(bos_token_id=layout.bos_id, eos_token_id=layout.eos_id)
        backbone = AutoConfig.for_model(**values)
    if not isinstance(backbone, PretrainedConfig):
        raise TypeError(f"backbone must be a config dict, a PretrainedConfig or an HF model, got {type(backbone)}")
    backbone.vocab_size = layout.vocab_size
    return AutoModel.from_config(backbone, attn_implementation=attn_implementation)

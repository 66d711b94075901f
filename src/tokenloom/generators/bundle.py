"""A generator bundle: the folder that holds everything a generation needs, and the three steps it runs.

    runs/digits/
      generator.json          {"format": "tokenloom/generator", "condition": "label", "strategies": {...}}
      next_token/  next_scale/  tokenizer/  tokenizer_multiscale/      (save_pretrained folders)

    bundle = GeneratorBundle.load("runs/digits")
    prompts = bundle.pack([3, 7])                                  # condition -> prompt records
    ids = bundle.generate(prompts, GenerationRequest("next_scale", cfg=2.0))  # -> GeneratedIds
    images = bundle.decode(ids)                                    # (B, H, W, C) uint8

Each strategy names the model folder that runs it and the tokenizer that decodes its ids:

    "strategies": {"next_token": {"model": "next_token", "tokenizer": "tokenizer"},
                   "speculative": {"model": "next_token", "tokenizer": "tokenizer", "window": 8},
                   "next_scale": {"model": "next_scale", "tokenizer": "tokenizer_multiscale"}}

``next_token`` and ``speculative`` decode a `LoomModel` through `decoding.generate` (raster order, the image
segment scripted after the condition); ``next_scale`` runs a `NextScaleModel`. Models and tokenizers load on
first use and stay loaded (a long-lived actor holds one bundle). Paths inside generator.json are relative to
the bundle folder and may not leave it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from tokenloom.generators.decoding import generate
from tokenloom.generators.layout import VocabularyLayout
from tokenloom.generators.model import LoomModel
from tokenloom.generators.next_scale import NextScaleModel, generate_next_scale
from tokenloom.generators.sampling import CFG, Greedy, Sampler, Temperature, TopK
from tokenloom.generators.speculative import SpeculativeJacobi

BUNDLE_NAME = "generator.json"
BUNDLE_FORMAT = "tokenloom/generator"
STRATEGIES = ("next_token", "speculative", "next_scale")


@dataclass(frozen=True)
class GenerationRequest:
    """How to generate: the strategy and its sampling. ``temperature=0`` is greedy; ``cfg=None`` no guidance.

    Requests with equal settings can share a batch (`key`); ``seed`` seeds the batch's random stream.
    """

    strategy: str = "next_token"
    cfg: float | None = None
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: use one of {list(STRATEGIES)}")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0: greedy)")

    @property
    def key(self) -> tuple[Any, ...]:
        return tuple(asdict(self).values())

    def sampler(self) -> Sampler:
        if self.temperature == 0:
            return Sampler([Greedy()])
        processors = [Temperature(self.temperature)] + ([TopK(self.top_k)] if self.top_k else [])
        return Sampler(processors, seed=self.seed)


@dataclass
class GeneratedIds:
    """ids_BN: the generated codes of each row, in the order its tokenizer decodes (raster, or scales
    concatenated small to large); sequences: prompt + generated part in the layout's ids (what
    ``layout.unpack`` reads); forward_passes and seconds: of the whole batch."""

    strategy: str
    ids_BN: np.ndarray
    forward_passes: int
    seconds: float
    sequences: list[np.ndarray] = field(default_factory=list)  # each row's whole sequence in the layout's ids
    extra: dict[str, Any] = field(default_factory=dict)


class GeneratorBundle:
    """Models and tokenizers of a generator folder, loaded on first use (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, config: Mapping[str, Any], device: str = "cpu") -> None:
        self.root = os.path.abspath(root)
        self.device = torch.device(device)
        self.config = dict(config)
        self.condition = self.config.get("condition", "label")
        self.defaults = dict(self.config.get("defaults", {}))
        self.strategies = dict(self.config["strategies"])
        for name, spec in self.strategies.items():
            if name not in STRATEGIES:
                raise ValueError(f"{BUNDLE_NAME}: unknown strategy {name!r}; tokenloom knows {list(STRATEGIES)}")
            for key in ("model", "tokenizer"):
                self._path(spec[key])  # fails early on a path outside the bundle
        self._models: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._layouts: dict[str, VocabularyLayout] = {}

    @classmethod
    def load(cls, root: str | os.PathLike, device: str = "cpu") -> GeneratorBundle:
        path = os.path.join(root, BUNDLE_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {os.fspath(root)!r} a generator folder (tokenloom demo writes one)?")
        with open(path) as f:
            config = json.load(f)
        if config.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path} has format={config.get('format')!r}, not {BUNDLE_FORMAT!r}")
        return cls(root, config, device)

    @staticmethod
    def write(root: str | os.PathLike, strategies: Mapping[str, Mapping[str, Any]], condition: str = "label",
              defaults: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """Write generator.json for folders already saved under ``root``."""
        config = {"format": BUNDLE_FORMAT, "format_version": 1, "condition": condition,
                  "strategies": {k: dict(v) for k, v in strategies.items()}, "defaults": dict(defaults or {})}  # fmt: skip
        GeneratorBundle(root, config)  # validates
        with open(os.path.join(root, BUNDLE_NAME), "w") as f:
            json.dump(config, f, indent=2)

    def _path(self, relative: str) -> str:
        path = os.path.abspath(os.path.join(self.root, relative))
        if os.path.commonpath([path, self.root]) != self.root:
            raise ValueError(f"{BUNDLE_NAME}: {relative!r} lies outside the bundle folder {self.root}")
        return path

    def request(self, strategy: str | None = None, **options: Any) -> GenerationRequest:
        """A request with the bundle's defaults filled in (``strategy=None``: the first strategy)."""
        values = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}
        values["strategy"] = strategy or values.get("strategy") or next(iter(self.strategies))
        if values["strategy"] not in self.strategies:
            raise ValueError(f"strategy {values['strategy']!r} is not in this bundle; it has {list(self.strategies)}")
        return GenerationRequest(**values)

    # -- the three steps ------------------------------------------------------------------------------
    def pack(self, labels: Sequence[int], strategy: str | None = None) -> list[np.ndarray]:
        """Condition -> prompts: ``<bos> <begin:label> y <end:label>`` per label, in the strategy's layout."""
        layout = self.layout(strategy)
        size = layout.modalities[layout.index(self.condition)].size
        prompts = []
        for i, y in enumerate(np.asarray(labels).reshape(-1).tolist()):
            if not isinstance(y, int) or not 0 <= y < size:
                raise ValueError(f"row {i}: {self.condition}={y!r} is not a class id in [0, {size})")
            prompts.append(layout.pack([(self.condition, [y])], add_eos=False).ids_L)
        return prompts

    def generate(self, prompts: Sequence[np.ndarray], request: GenerationRequest) -> GeneratedIds:
        """Prompts -> generated ids of one batch (the whole batch shares ``request``)."""
        spec = self.strategies[request.strategy]
        model = self.model(request.strategy)
        layout = model.layout
        sampler = request.sampler()
        started = time.perf_counter()
        if request.strategy == "next_scale":
            cfg = CFG(request.cfg, schedule="linear") if request.cfg else None
            labels = [_label_of(layout, p, self.condition) for p in prompts]
            out = generate_next_scale(model, self.tokenizer(request.strategy), labels, sampler, cfg)
            ids_BN = out.ids_BL.cpu().numpy()
            begin, end = layout.begin_id(model.modality), layout.end_id(model.modality)
            sequences = [np.concatenate([np.asarray(p), [begin], row + layout.range(model.modality)[0], [end, layout.eos_id]])
                         for p, row in zip(prompts, ids_BN)]  # fmt: skip
            return GeneratedIds(request.strategy, ids_BN, out.forward_passes, time.perf_counter() - started, sequences)
        modality = spec.get("modality", "image")
        n = layout.modalities[layout.index(modality)].tokens_per_segment
        cfg = CFG(request.cfg, condition=(self.condition,)) if request.cfg else None
        strategy = None
        if request.strategy == "speculative":
            strategy = SpeculativeJacobi(segments=[(modality, n)], window=int(spec.get("window", 8)))
        out = generate(model, list(prompts), segments=[(modality, n)], sampler=sampler, cfg=cfg, strategy=strategy)
        ids_BN = np.stack([row[-1].ids.reshape(-1) for row in out.segments()])
        sequences = [ids_L[mask_L > 0].numpy() for ids_L, mask_L in zip(out.sequences_BL.cpu(), out.attention_mask_BL.cpu())]
        extra = {"tokens_per_forward_pass": round(out.tokens_per_forward_pass, 3)}
        return GeneratedIds(request.strategy, ids_BN, out.forward_passes, time.perf_counter() - started, sequences, extra)

    @torch.no_grad()
    def decode(self, generated: GeneratedIds) -> np.ndarray:
        """Generated ids -> (B, H, W, C) uint8 images through the strategy's tokenizer."""
        tokenizer = self.tokenizer(generated.strategy)
        layout = self.layout(generated.strategy)
        modality = self.strategies[generated.strategy].get("modality", "image")
        shape = layout.modalities[layout.index(modality)].shape or generated.ids_BN.shape[1:]
        column = generated.ids_BN.reshape(len(generated.ids_BN), *shape)  # what a token column holds
        return np.asarray(tokenizer.decode_tokens(tokenizer.column_to_ids(column)))

    # -- loading --------------------------------------------------------------------------------------
    def layout(self, strategy: str | None = None) -> VocabularyLayout:
        """The strategy's vocabulary layout, from its model's config.json alone (no weights loaded)."""
        folder = self.strategies[strategy or next(iter(self.strategies))]["model"]
        if folder not in self._layouts:
            with open(os.path.join(self._path(folder), "config.json")) as f:
                config = json.load(f)
            saved = config["loom"]["layout"] if "loom" in config else config["layout"]
            self._layouts[folder] = VocabularyLayout.from_dict(saved)
        return self._layouts[folder]

    def model(self, strategy: str) -> Any:
        folder = self.strategies[strategy]["model"]
        if folder not in self._models:
            path = self._path(folder)
            with open(os.path.join(path, "config.json")) as f:
                kind = json.load(f).get("format")
            cls = NextScaleModel if kind == "tokenloom/next-scale-model" else LoomModel
            self._models[folder] = cls.from_pretrained(path).to(self.device).eval()
        return self._models[folder]

    def tokenizer(self, strategy: str) -> Any:
        from tokenloom.tokenizers import load_tokenizer

        folder = self.strategies[strategy]["tokenizer"]
        if folder not in self._tokenizers:
            self._tokenizers[folder] = load_tokenizer(self._path(folder)).to(self.device).eval()
        return self._tokenizers[folder]




def _label_of(layout: VocabularyLayout, prompt: np.ndarray, condition: str) -> int:
    """The class id in a packed prompt (-1 where it holds NULL: unconditional)."""
    lo, hi = layout.range(condition)
    ids = np.asarray(prompt)
    found = ids[(ids >= lo) & (ids < hi)]
    return int(found[0] - lo) if found.size else -1


__all__ = ["GeneratedIds", "GenerationRequest", "GeneratorBundle"]

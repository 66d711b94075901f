"""Generation as pipeline nodes: condition -> pack -> generate -> unpack, then ``tokens/detokenize`` -> sink.

    PackPrompt(path="runs/demo", strategy="next_scale", column="label")         label -> prompt_ids
    GenerateNode(path="runs/demo", strategy="next_scale", cfg=2.0)              prompt_ids -> sequence,
                                                                                 strategy, forward_passes
    UnpackNode(path="runs/demo", strategy="next_scale", output="image_tokens")  sequence -> image_tokens

``path`` is a generator folder (generator.json: see `generators.bundle`). `GenerateNode` is an actor: it loads
the model once, decodes a whole batch of rows together (conditional and unconditional rows of CFG in one
batch, with the KV cache) and records for each row the strategy and the batch's forward passes. A row whose
condition is out of range, or whose generated sequence lacks the segment to unpack, goes to the error table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenloom.modality import Batch
from tokenloom.nodes.base import Node, RowError
from tokenloom.registry import NODES


@dataclass
class _WithBundle(Node):
    path: str = ""
    strategy: str = "next_token"

    def setup(self) -> None:
        from tokenloom.generators.bundle import GeneratorBundle

        device = "cuda" if self.resources.gpus > 0 else "cpu"
        self._bundle = GeneratorBundle.load(self.path, device=device)
        if self.strategy not in self._bundle.strategies:
            raise ValueError(f"strategy {self.strategy!r} is not in {self.path}; it has {list(self._bundle.strategies)}")


@NODES.register("generate/pack")
@dataclass
class PackPrompt(_WithBundle):
    """A class-label column -> ``prompt_ids``: ``<bos> <begin:label> y <end:label>`` in the model's layout."""

    column: str = "label"
    output: str = "prompt_ids"

    def reads(self) -> tuple[str, ...]:
        return (self.column,)

    def writes(self) -> tuple[str, ...]:
        return (self.output,)

    def process_batch(self, batch: Batch) -> Batch:
        prompts = np.empty(len(batch[self.column]), dtype=object)
        for i, y in enumerate(batch[self.column].tolist()):
            try:
                prompts[i] = self._bundle.pack([y], self.strategy)[0]
            except ValueError as error:
                raise RowError(str(error).removeprefix("row 0: "), field=self.column) from None
        return {**batch, self.output: prompts}


@NODES.register("generate/generate")
@dataclass
class GenerateNode(_WithBundle):
    """``prompt_ids`` -> ``sequence`` (prompt + generated ids), ``strategy`` and ``forward_passes`` per row."""

    column: str = "prompt_ids"
    output: str = "sequence"
    cfg: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    seed: int | None = 0

    def reads(self) -> tuple[str, ...]:
        return (self.column,)

    def writes(self) -> tuple[str, ...]:
        return (self.output, "strategy", "forward_passes")

    def process_batch(self, batch: Batch) -> Batch:
        request = self._bundle.request(self.strategy, cfg=self.cfg, temperature=self.temperature, top_k=self.top_k,
                                       seed=self.seed)  # fmt: skip
        prompts = [np.asarray(p, dtype=np.int64) for p in batch[self.column]]
        generated = self._bundle.generate(prompts, request)
        sequences = np.empty(len(prompts), dtype=object)
        sequences[:] = generated.sequences
        n = len(prompts)
        return {**batch, self.output: sequences, "strategy": np.array([generated.strategy] * n),
                "forward_passes": np.full(n, generated.forward_passes, dtype=np.int64)}  # fmt: skip


@NODES.register("generate/unpack")
@dataclass
class UnpackNode(_WithBundle):
    """``sequence`` -> the codes of its ``modality`` segment, in the layout's shape (what a detokenizer reads)."""

    column: str = "sequence"
    modality: str = "image"
    output: str = "image_tokens"

    def reads(self) -> tuple[str, ...]:
        return (self.column,)

    def writes(self) -> tuple[str, ...]:
        return (self.output,)

    def process_batch(self, batch: Batch) -> Batch:
        layout = self._bundle.layout(self.strategy)
        rows: list[Any] = []
        for sequence in batch[self.column]:
            segments = [s for s in layout.unpack(np.asarray(sequence)) if s.modality == self.modality]
            if not segments or segments[-1].truncated or segments[-1].null:
                raise RowError(f"the sequence holds no complete {self.modality!r} segment", field=self.column)
            rows.append(segments[-1].ids.astype(np.int32))
        return {**batch, self.output: np.stack(rows)}

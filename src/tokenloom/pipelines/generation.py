"""A generation pipeline you can call: condition -> pack -> generate -> decode, in-process or on Ray actors.

    gen = tl.load_pipeline("runs/digits")                     # executor="local" (in-process) or "ray"
    out = gen.generate(label=[3, 7], strategy="next_scale", cfg=2.0)
    out.images (B, H, W, C) uint8, out.ids, out.forward_passes, out.seconds
    gen.close()                                               # or use it as a context manager

Calls from several threads are batched: a batcher thread takes the oldest waiting request, gathers the others
with the same settings (strategy, guidance, sampling) that arrive within ``max_wait_ms``, up to ``max_batch``
rows, runs them as one batch and hands each caller its rows. On Ray the three steps are long-lived actors,
each with its own resources, chained in a compiled graph (Ray's accelerated DAG): a batch hops between the
actors through shared-memory channels instead of ordinary actor calls (see `generation_ray.py`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenloom.generators.bundle import GeneratedIds, GenerationRequest, GeneratorBundle

Backend = Callable[[list[int], GenerationRequest], tuple[GeneratedIds, np.ndarray]]


@dataclass
class GenerationResult:
    """One caller's rows. forward_passes / seconds / batch_size describe the batch its rows ran in."""

    images: np.ndarray
    ids: np.ndarray
    strategy: str
    forward_passes: int
    seconds: float
    batch_size: int


def run_steps(bundle: GeneratorBundle, labels: list[int], request: GenerationRequest) -> tuple[GeneratedIds, np.ndarray]:
    """The three steps in this process."""
    generated = bundle.generate(bundle.pack(labels, request.strategy), request)
    return generated, bundle.decode(generated)


class GenerationPipeline:
    """Callable generation over a generator folder (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        executor: str = "local",
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        resources: dict[str, dict[str, float]] | None = None,
        address: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.bundle = GeneratorBundle.load(path)  # checks the folder (models load where they run)
        self.executor = executor
        self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1000.0
        self._ray: Any = None
        if executor == "local":
            self._backend: Backend = lambda labels, request: run_steps(self.bundle, labels, request)
        elif executor == "ray":
            from tokenloom.pipelines.generation_ray import RayGeneration

            self._ray = RayGeneration(self.path, resources=resources, address=address)
            self._backend = self._ray
        else:
            raise ValueError(f"executor={executor!r}: use 'local' or 'ray'")
        self._queue: queue.Queue[tuple[list[int], GenerationRequest, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="tokenloom-batcher", daemon=True)
        self._closed = False
        self._thread.start()

    def generate(
        self,
        label: int | Sequence[int],
        strategy: str | None = None,
        cfg: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> GenerationResult:
        """Images for the given class labels (blocks until they are ready; safe to call from many threads)."""
        return self.submit(label, strategy, cfg=cfg, temperature=temperature, top_k=top_k, seed=seed).result()

    def submit(self, label: int | Sequence[int], strategy: str | None = None, **options: Any) -> Future:
        """`generate` without waiting: a Future of the `GenerationResult`."""
        if self._closed:
            raise RuntimeError("this GenerationPipeline is closed")
        request = self.bundle.request(strategy, **options)
        labels = np.atleast_1d(label).tolist()
        self.bundle.pack(labels, request.strategy)  # a bad label fails in the caller's thread
        future: Future = Future()
        self._queue.put((labels, request, future))
        return future

    def _serve(self) -> None:
        waiting: list[tuple[list[int], GenerationRequest, Future]] = []
        while True:
            if not waiting:
                item = self._queue.get()
                if item is None:
                    return
                waiting.append(item)
            first = waiting[0]
            deadline = time.perf_counter() + self.max_wait
            while sum(len(w[0]) for w in waiting if w[1].key == first[1].key) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                waiting.append(item)
            batch, rows = [], 0
            for w in list(waiting):
                if w[1].key == first[1].key and (not batch or rows + len(w[0]) <= self.max_batch):
                    batch.append(w)
                    rows += len(w[0])
                    waiting.remove(w)
            self._run(batch)

    def _run(self, batch: list[tuple[list[int], GenerationRequest, Future]]) -> None:
        labels = [y for w in batch for y in w[0]]
        try:
            generated, images = self._backend(labels, batch[0][1])
        except Exception as error:  # every caller of the batch gets the error
            for _, _, future in batch:
                future.set_exception(error)
            return
        start = 0
        for rows, _, future in batch:
            stop = start + len(rows)
            future.set_result(GenerationResult(images[start:stop], generated.ids_BN[start:stop], generated.strategy,
                                               generated.forward_passes, generated.seconds, len(labels)))  # fmt: skip
            start = stop

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._ray is not None:
            self._ray.close()

    def __enter__(self) -> GenerationPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_pipeline(path: str | os.PathLike, executor: str = "local", **options: Any) -> GenerationPipeline:
    """A callable generation pipeline over a generator folder (``tokenloom demo`` writes runs/demo)."""
    return GenerationPipeline(path, executor=executor, **options)


__all__ = ["GenerationPipeline", "GenerationResult", "load_pipeline", "run_steps"]

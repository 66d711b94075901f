"""Training of a `LoomModel` (next-token) or a `NextScaleModel` (next-scale) over packed token shards, in one
process or on Ray Train workers: ``train`` calls ``model.loss(ids_BL, mask_BL)``.

    dataset = TokenShards("out/tokens", layout, label_column="label", token_column="image_tokens",
                          condition_dropout=0.1)              # or ids_column="ids" for packed rows
    metrics = train(model, dataset, steps=2000, batch_size=64, checkpoint_dir="ckpt")   # -> losses, seconds
    metrics = train_distributed(model, dataset, steps=200, num_workers=2)                # Ray Train, gloo on CPU

`TokenShards` reads Parquet files (a `WriteParquet` output root, a folder of ``*.parquet`` or a list of files).
Each epoch it visits the files in a seeded order and each file's rows in a seeded order; row ``n`` of that
order goes to slot ``n % (world_size * loader_workers)``, so every row is seen exactly once per epoch across
distributed ranks and DataLoader workers (each slot reads every file and keeps its own rows: fine for token
shards, which are small). Condition dropout (classifier-free guidance) replaces the condition segments by the
NULL token (``layout.drop_condition``) with probability ``condition_dropout``, drawn from (seed, epoch, row),
so the same rows are dropped whatever the number of workers.

A checkpoint folder holds ``model/`` (``save_pretrained``), ``optimizer.safetensors`` (AdamW's moments) and
``trainer_state.json`` (step, epoch, batches consumed in that epoch, losses so far); no pickle. ``train`` with
the folder of an earlier run resumes from it and retraces the uninterrupted run's losses.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from tokenloom.generators.layout import VocabularyLayout
from tokenloom.generators.model import LoomModel

if TYPE_CHECKING:
    from tokenloom.generators.next_scale import NextScaleModel

    Trainable = LoomModel | NextScaleModel  # anything with loss(ids_BL, mask_BL), save_pretrained, from_pretrained
from tokenloom.tokenizers.train import _all_reduce, _broadcast_from_rank0, _distributed

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


@dataclass
class TokenShards(torch.utils.data.IterableDataset):
    """Parquet token shards -> 1-D int64 id sequences (see the module docstring).

    ids_column: packed shared-vocabulary ids per row; or, with ``label_column``, records packed on the fly as
        ``[("label", [y]), (token_modality, row of token_column)]`` through ``layout``.
    condition: the modalities that condition dropout nulls (None: every segment).
    rank / world_size: None takes them from ``torch.distributed`` when it is initialised.
    """

    paths: str | Sequence[str]
    layout: VocabularyLayout
    ids_column: str = "ids"
    label_column: str | None = None
    token_column: str = "image_tokens"
    token_modality: str = "image"
    shuffle: bool = True
    seed: int = 0
    condition_dropout: float = 0.0
    condition: tuple[str, ...] | None = ("label",)
    rank: int | None = None
    world_size: int | None = None
    epoch: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        if not 0.0 <= self.condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout={self.condition_dropout} must lie in [0, 1]")

    def set_epoch(self, epoch: int) -> None:
        """The next iteration's shuffle and dropout draws (set it before the DataLoader starts its workers)."""
        self.epoch = epoch

    def files(self) -> list[str]:
        if not isinstance(self.paths, (str, os.PathLike)):
            return [os.fspath(p) for p in self.paths]
        root = os.fspath(self.paths)
        if os.path.isfile(root):
            return [root]
        if os.path.isdir(os.path.join(root, "_manifest")):  # a WriteParquet output root: committed shards only
            from tokenloom.nodes.sinks import ShardStore

            return [os.path.join(root, e["shard"]) for e in ShardStore(root).manifest() if e.get("shard")]
        files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".parquet"))
        if not files:
            raise FileNotFoundError(f"TokenShards: no .parquet files in {root!r}; pass a file list or a WriteParquet root")
        return files

    def _slot(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            on = dist.is_available() and dist.is_initialized()
            rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[torch.Tensor]:
        slot, slots = self._slot()
        rng = np.random.default_rng([self.seed, self.epoch])
        files = self.files()
        order = rng.permutation(len(files)) if self.shuffle else range(len(files))
        n = 0  # position in this epoch's global row order
        for f in order:
            rows = self._read(files[f])
            for r in rng.permutation(len(rows)) if self.shuffle else range(len(rows)):
                if n % slots == slot:
                    yield torch.from_numpy(self._example(rows[r], n))
                n += 1

    def _read(self, path: str) -> list[Any]:
        import pyarrow.parquet as pq

        from tokenloom.modality import table_to_batch

        columns = [self.ids_column] if self.label_column is None else [self.label_column, self.token_column]
        table = pq.read_table(path, columns=columns)
        batch = table_to_batch(table)
        if self.label_column is None:
            return list(batch[self.ids_column])
        return list(zip(batch[self.label_column], batch[self.token_column]))

    def _example(self, row: Any, n: int) -> np.ndarray:
        if self.label_column is None:
            ids_L = np.asarray(row, dtype=np.int64).reshape(-1)
        else:
            label, tokens = row
            record = [("label", np.asarray([label])), (self.token_modality, np.asarray(tokens))]
            ids_L = self.layout.pack(record).ids_L
        if self.condition_dropout and np.random.default_rng([self.seed, self.epoch, n, 1]).random() < self.condition_dropout:
            ids_L = self.layout.drop_condition(ids_L, self.condition)
        return ids_L


def collate(layout: VocabularyLayout, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences with PAD: (ids_BL, attention_mask_BL), as `LoomModel.next_token_loss` expects."""
    length = max(len(r) for r in rows)
    ids_BL = torch.full((len(rows), length), layout.pad_id, dtype=torch.long)
    mask_BL = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_BL[i, : len(r)], mask_BL[i, : len(r)] = r, 1
    return ids_BL, mask_BL


def cosine_lr(step: int, steps: int, learning_rate: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then a cosine decay from ``learning_rate`` to ``min_lr_ratio * learning_rate``."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    model: Trainable,
    dataset: TokenShards,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    loader_workers: int = 0,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    log_every: int = 100,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` optimizer steps in total (AdamW, cosine schedule over ``steps``).

    stop_after: end this call after that many steps (a preemptible job's slice); a later call resumes.
    on_step: called with (step, loss) after every step (a progress bar).

    With ``checkpoint_dir``: resumes from it when it holds a checkpoint, saves every ``checkpoint_every`` steps
    and at the end. When ``torch.distributed`` is initialised, gradients are averaged over the ranks and only
    rank 0 writes checkpoints. Returns losses (one per step since step 0, resumed ones included), steps,
    start_step (where this call began) and seconds.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train needs steps and batch_size >= 1, got {steps}, {batch_size}")
    started = time.perf_counter()
    device = next(model.parameters()).device
    optimizer = adamw(model, learning_rate, weight_decay)
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "losses": []}
    if checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, STATE_NAME)):
        state = load_checkpoint(checkpoint_dir, model, optimizer)
        logger.info("train: resuming from %s at step %d", checkpoint_dir, state["step"])
    for p in model.parameters():
        _broadcast_from_rank0(p.data)
    start_step, losses = state["step"], list(state["losses"])
    end = steps if stop_after is None else min(steps, start_step + stop_after)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers, collate_fn=functools.partial(collate, dataset.layout))
    model.train()
    while state["step"] < end:
        dataset.set_epoch(state["epoch"])
        batches = iter(loader)
        for _ in range(state["batches_in_epoch"]):  # a resumed epoch skips what the interrupted run consumed
            next(batches)
        for ids_BL, mask_BL in batches:
            loss = _step(model, optimizer, ids_BL.to(device), mask_BL.to(device), grad_clip,
                         cosine_lr(state["step"], steps, learning_rate, warmup_steps, min_lr_ratio))  # fmt: skip
            losses.append(loss)
            if on_step is not None:
                on_step(state["step"] + 1, loss)
            state.update(step=state["step"] + 1, batches_in_epoch=state["batches_in_epoch"] + 1, losses=losses)
            if log_every and state["step"] % log_every == 0:
                logger.info("train step %d/%d: loss %.4f", state["step"], steps, float(np.mean(losses[-log_every:])))
            if checkpoint_dir and checkpoint_every and state["step"] % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, model, optimizer, state)
            if state["step"] >= end:
                break
        else:
            state.update(epoch=state["epoch"] + 1, batches_in_epoch=0)
    if checkpoint_dir:
        save_checkpoint(checkpoint_dir, model, optimizer, state)
    model.eval()
    return {"losses": losses, "steps": state["step"], "start_step": start_step, "seconds": time.perf_counter() - started}


def train_in_memory(
    model: Trainable,
    sample_batch: Callable[[int], Sequence[Any]],
    steps: int,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
) -> list[float]:
    """`train`'s optimizer, schedule and step over batches made in memory: ``sample_batch(step)`` returns the
    records (or `PackedSequence`s) of one batch, packed here with right padding. Returns the losses."""
    optimizer = adamw(model, learning_rate, weight_decay)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for step in range(steps):
        batch = model.layout.pack_batch(sample_batch(step), padding_side="right")
        lr = cosine_lr(step, steps, learning_rate, warmup_steps, min_lr_ratio)
        losses.append(_step(model, optimizer, batch.ids_BL.to(device), batch.attention_mask_BL.to(device), grad_clip, lr))
    model.eval()
    return losses


def adamw(model: Trainable, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def _step(model: Trainable, optimizer: torch.optim.Optimizer, ids_BL: torch.Tensor, mask_BL: torch.Tensor,
          grad_clip: float | None, lr: float) -> float:  # fmt: skip
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model.loss(ids_BL, mask_BL)
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    if _distributed():  # data parallel by hand: one all-reduce of every gradient, averaged
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        _all_reduce(flat, average=True)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


# -- checkpoints: safetensors + JSON, never pickle ---------------------------------------------------------
def save_checkpoint(directory: str, model: Trainable, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Writes a new folder beside ``directory`` and swaps it in, so a crash never leaves half a checkpoint."""
    from safetensors.torch import save_file

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".ckpt-", dir=parent)
    model.save_pretrained(os.path.join(staging, "model"))
    saved = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().contiguous().cpu() for i, s in saved["state"].items() for k, v in s.items()}
    save_file(tensors, os.path.join(staging, OPTIMIZER_NAME))
    groups = [{k: v for k, v in g.items()} for g in saved["param_groups"]]
    with open(os.path.join(staging, STATE_NAME), "w") as f:
        json.dump({**state, "param_groups": groups}, f)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(staging, directory)


def load_checkpoint(directory: str, model: Trainable, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Loads the weights and AdamW's state into ``model`` and ``optimizer``; returns the trainer state."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, STATE_NAME)) as f:
        state = json.load(f)
    loaded = type(model).from_pretrained(os.path.join(directory, "model"))
    model.load_state_dict(loaded.state_dict(), strict=True)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(os.path.join(directory, OPTIMIZER_NAME)).items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": moments, "param_groups": state.pop("param_groups")})
    return state


# -- Ray Train ------------------------------------------------------------------------------------------
def train_distributed(
    model: Trainable, dataset: TokenShards, steps: int, num_workers: int = 2, use_gpu: bool = False, **options: Any
) -> dict[str, Any]:
    """``train`` on ``num_workers`` Ray Train workers (TorchTrainer; gloo on CPU): each rank reads its rows of
    ``dataset`` (whose files every worker must reach), gradients are averaged, ``batch_size`` is per worker.
    The caller's ``model`` gets rank 0's final weights. Returns ``train``'s metrics with losses averaged over
    the workers, plus world_size. ``options`` go to ``train`` (checkpoint_dir must be on a shared filesystem)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from tokenloom.pipelines.ray_executor import ensure_ray

    started = time.perf_counter()
    ensure_ray()
    run_root = tempfile.mkdtemp(prefix="tl-loom-train-")
    config = {"model": ray.put(model.cpu()), "dataset": dataset, "steps": steps, "use_gpu": use_gpu,
              "options": options}  # fmt: skip
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(storage_path=run_root, name=f"tokenloom-loom-{uuid.uuid4().hex[:8]}"),
    )
    try:
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("train_distributed: the workers finished without rank 0's checkpoint")
        with result.checkpoint.as_directory() as directory:
            model.load_state_dict(type(model).from_pretrained(directory).state_dict(), strict=True)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    model.eval()
    return {**dict(result.metrics or {}), "seconds": time.perf_counter() - started}


def _train_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    if not config["use_gpu"]:
        torch.set_num_threads(1)  # one core per worker: more threads only fight over it
    model = ray.get(config["model"])  # a LoomModel or NextScaleModel (with its attached tokenizer)
    if config["use_gpu"]:
        model.to(ray.train.torch.get_device())
    metrics = train(model, config["dataset"], config["steps"], **config["options"])
    losses = torch.tensor(metrics["losses"], dtype=torch.float64)
    _all_reduce(losses, average=True)
    metrics.update(losses=losses.tolist(), world_size=context.get_world_size())
    if context.get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

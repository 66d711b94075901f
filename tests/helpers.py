"""Nodes and data shared by the unit and integration tests (importable by Ray workers too)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import tokenloom as tl
from tokenloom.registry import NODES


def write_captions(url: str, files: int = 3, rows: int = 10, row_group_size: int = 4, bad_every: int = 0) -> list[str]:
    """Parquet files of captions (and a small float tensor column) under `url`; returns all captions."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    captions = []
    rng = np.random.default_rng(0)
    for i in range(files):
        caps = []
        for j in range(rows):
            k = i * rows + j
            caps.append("bad row" if bad_every and k % bad_every == 0 else f"caption {k} " + "x" * (k % 7))
        table = pa.table({
            "caption": caps,
            "feature": pa.FixedShapeTensorArray.from_numpy_ndarray(rng.random((rows, 2, 3), dtype=np.float32)),
        })
        with fs.open(f"{root}/part-{i:03d}.parquet", "wb") as f:
            pq.write_table(table, f, row_group_size=row_group_size)
        captions += caps
    return captions


@NODES.register("test/count_chars")
@dataclass
class CountChars(tl.Node):
    """Stateful (has setup): caption -> <column>_chars."""

    column: str = "caption"

    def reads(self):
        return (self.column,)

    def writes(self):
        return (f"{self.column}_chars",)

    def setup(self):
        self._len = len

    def process_batch(self, batch):
        return {f"{self.column}_chars": np.array([self._len(s) for s in batch[self.column]], dtype=np.int64)}


@tl.node(reads=["caption"], writes=["upper"])
def upper(batch):
    return {"upper": np.array([s.upper() for s in batch["caption"]], dtype=object)}


NODES.register("test/upper", upper)


@tl.node(reads=["caption_chars", "upper", "feature"], writes=["summary", "feature_sum"])
def summarise(batch):
    return {
        "summary": np.array([f"{u}|{c}" for u, c in zip(batch["upper"], batch["caption_chars"])], dtype=object),
        "feature_sum": batch["feature"].reshape(len(batch["feature"]), -1).sum(axis=1),
    }


NODES.register("test/summarise", summarise)


@NODES.register("test/reject_bad")
@dataclass
class RejectBad(tl.Node):
    """Raises on rows whose caption is 'bad row' (the whole batch fails; the runner isolates the rows)."""

    WRITES = ("checked",)
    READS = ("caption",)

    def process_batch(self, batch):
        for s in batch["caption"]:
            if s == "bad row":
                raise tl.RowError("caption is the placeholder 'bad row'", field="caption")
        return {"checked": np.ones(len(batch["caption"]), dtype=bool)}


@NODES.register("test/slow")
@dataclass
class Slow(tl.Node):
    """Sleeps per batch, so that a test can kill a run part-way."""

    seconds: float = 0.2
    WRITES = ("slow_done",)

    def process_batch(self, batch):
        time.sleep(self.seconds)
        return {"slow_done": np.ones(len(batch["row_id"]), dtype=bool)}


@NODES.register("test/gpu_probe")
@dataclass
class GpuProbe(tl.Node):
    """Records which GPU Ray gave the worker and which worker it is."""

    WRITES = ("gpu_ids", "worker_pid")

    def setup(self):
        import ray

        self._gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        self._cuda = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def process_batch(self, batch):
        n = len(batch["row_id"])
        return {
            "gpu_ids": np.array([f"{self._gpus};{self._cuda}"] * n, dtype=object),
            "worker_pid": np.full(n, os.getpid(), dtype=np.int64),
        }


def captions_pipeline(src: str, out: str, name: str = "captions") -> tl.Pipeline:
    """source -> (count_chars, upper) -> summarise -> sink: a fan-out and a fan-in."""
    p = tl.Pipeline(name)
    rows = p.source(tl.nodes.ReadParquet(path=src))
    n = p.add(CountChars(column="caption"), rows)
    u = p.add(upper(), rows)
    s = p.add(summarise(), n, u)
    p.sink(tl.nodes.WriteParquet(path=out, batch_size=8), s)
    return p


def tiny_generator(root) -> str:
    """A generator folder with untrained tiny parts: 16x16 digits-like images, a 4x4 FSQ tokenizer (16 codes),
    a 2-scale (1, 2) multi-scale tokenizer (8 codes), a next-token and a next-scale model. Milliseconds a batch."""
    import torch

    from tokenloom.generators import LoomModel, ModalityVocab, NextScaleModel, VocabularyLayout
    from tokenloom.generators.bundle import GeneratorBundle
    from tokenloom.tokenizers.image_multiscale import ImageMultiScaleTokenizer
    from tokenloom.tokenizers.image_vq import ImageVQTokenizer

    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    torch.manual_seed(0)
    fsq = ImageVQTokenizer(in_channels=1, downsample=4, channels=8, latent_channels=8, quantizer="fsq",
                           quantizer_kwargs={"levels": [4, 4]})
    scales = ImageMultiScaleTokenizer(in_channels=1, downsample=8, channels=8, latent_channels=8, codebook_size=8,
                                      dim=4, scales=(1, 2))
    fsq.save_pretrained(f"{root}/tokenizer")
    scales.save_pretrained(f"{root}/tokenizer_multiscale")
    label = ModalityVocab("label", 10, tokens_per_segment=1)
    LoomModel(VocabularyLayout([label, ModalityVocab.from_tokenizer(fsq, shape=(4, 4))]), llama).save_pretrained(
        f"{root}/next_token")
    layout = VocabularyLayout([label, ModalityVocab.from_tokenizer(scales, tokens_per_segment=5)])
    NextScaleModel.from_tokenizer(LoomModel(layout, llama), scales).save_pretrained(f"{root}/next_scale")
    GeneratorBundle.write(root, {
        "next_token": {"model": "next_token", "tokenizer": "tokenizer"},
        "speculative": {"model": "next_token", "tokenizer": "tokenizer", "window": 4},
        "next_scale": {"model": "next_scale", "tokenizer": "tokenizer_multiscale"},
    }, defaults={"temperature": 0.0})
    return str(root)

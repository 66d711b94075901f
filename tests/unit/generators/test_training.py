"""Training over token shards: exactly-once sharding, condition dropout, resume, and the quality bar on digits.

The quality bar (slow, a few minutes on 2 cores): a tiny FSQ tokenizer fitted on sklearn's digits (16x16 ->
4x4 ids over 1000 codes), a class-conditional 4-layer Llama trained on the packed (label, image) records, and
images generated for each requested class that an SVC fitted on the real 8x8 digits must recognise (>= 90%).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.unit.generators.conftest import TINY_LLAMA
from tokenloom.generators import CFG, LoomModel, ModalityVocab, Sampler, Temperature, TopK, VocabularyLayout, generate
from tokenloom.generators.training import TokenShards, collate, train
from tokenloom.modality import batch_to_table


def label_image_layout(codes: int = 8, grid: tuple[int, int] = (2, 2)) -> VocabularyLayout:
    return VocabularyLayout([ModalityVocab("label", 10, tokens_per_segment=1), ModalityVocab("image", codes, shape=grid)])


def write_label_shards(folder, labels: np.ndarray, tokens: np.ndarray, files: int = 1) -> None:
    """Rows split over ``files`` Parquet files: label (int64) and image_tokens (a fixed-shape tensor column)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), files)):
        table = batch_to_table({"label": labels[part], "image_tokens": tokens[part].astype(np.int32)})
        pq.write_table(table, folder / f"part-{i:03d}.parquet")


def random_shards(folder, rows: int = 101, files: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, tokens = rng.integers(0, 10, rows), rng.integers(0, 8, (rows, 2, 2))
    write_label_shards(folder, labels, tokens, files)
    return labels, tokens


def test_every_row_once_per_epoch_across_two_loader_workers(tmp_path):
    layout = label_image_layout()
    rows = 101
    folder = tmp_path / "ids"
    folder.mkdir()
    # packed rows: row i holds a sequence whose label segment and image segment say which row it is
    for f, part in enumerate(np.array_split(np.arange(rows), 3)):
        ids = [layout.pack([("label", [i % 10]), ("image", [[i // 10 % 8, i // 80], [0, 1]])]).ids_L for i in part]
        pq.write_table(pa.table({"ids": pa.array([x.tolist() for x in ids]), "row": pa.array(part)}), folder / f"{f}.parquet")
    dataset = TokenShards(str(folder), layout, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=lambda r: collate(layout, r))
    seen = [tuple(ids_L[m > 0].tolist()) for ids_BL, m_BL in loader for ids_L, m in zip(ids_BL, m_BL)]
    expected = sorted(tuple(x.tolist()) for x in pq.read_table(folder).column("ids").to_pylist() for x in [np.asarray(x)])
    assert sorted(seen) == expected and len(seen) == rows
    # two distributed ranks x two loader workers: the ranks' rows are disjoint and cover the epoch
    halves = [[tuple(x.tolist()) for x in TokenShards(str(folder), layout, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == expected
    # another epoch, another order; the same epoch, the same order
    first = [tuple(x.tolist()) for x in dataset]
    dataset.set_epoch(1)
    assert [tuple(x.tolist()) for x in dataset] != first and sorted(first) == expected


def test_condition_dropout_rate_is_close_to_p(tmp_path):
    layout = label_image_layout()
    random_shards(tmp_path / "t", rows=2000, files=2)
    dataset = TokenShards(str(tmp_path / "t"), layout, label_column="label", condition_dropout=0.2)
    rows = list(dataset)
    dropped = [r for r in rows if layout.null_id in r.tolist()]
    assert len(rows) == 2000 and abs(len(dropped) / len(rows) - 0.2) < 0.03
    segments = layout.unpack(dropped[0])
    assert segments[0].null and segments[0].modality == "label" and segments[1].ids.shape == (2, 2)  # image kept


def test_resume_from_checkpoint_retraces_the_uninterrupted_run(tmp_path):
    layout = label_image_layout()
    random_shards(tmp_path / "t", rows=40, files=2)

    def run(checkpoint_dir=None, stop_after=None):
        torch.manual_seed(0)
        model = LoomModel(layout, TINY_LLAMA)
        dataset = TokenShards(str(tmp_path / "t"), layout, label_column="label", condition_dropout=0.3, seed=1)
        options = {"batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 2, "checkpoint_dir": checkpoint_dir, "checkpoint_every": 4}
        return train(model, dataset, 10, stop_after=stop_after, **options), model

    whole, whole_model = run()  # 10 steps of 16 over 40 rows: epochs end mid-run (3 batches each)
    cut, _ = run(str(tmp_path / "ckpt"), stop_after=5)  # interrupted inside the second epoch
    resumed, resumed_model = run(str(tmp_path / "ckpt"))
    assert cut["steps"] == 5 and resumed["start_step"] == 5 and resumed["steps"] == 10
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=1e-5)
    assert whole["losses"][-1] < whole["losses"][0]
    for a, b in zip(whole_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- the quality bar ----------------------------------------------------------------------------------
DIGITS_LLAMA = {
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 32,
}  # fmt: skip


def digits_quality(folder, steps: int = 800, samples_per_class: int = 20, seed: int = 0, threads: int = 1) -> dict:
    """Fit the tokenizer, train the model, generate, classify; returns accuracy and the seconds of each step.

    One torch thread by default: on 2 cores shared with other jobs, OpenMP's barrier between 2 threads made the
    tokenizer fit more than 20x slower (minutes instead of 40 s); one thread stays within the 2-core budget.
    """
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    from tokenloom.nodes.datasets import load_digits_images
    from tokenloom.registry import TOKENIZERS

    torch.set_num_threads(threads)  # the bar: 2 CPU cores
    times, started = {}, time.perf_counter()
    images, labels = load_digits_images(16)
    torch.manual_seed(seed)
    tokenizer = TOKENIZERS.get("image/vq")(in_channels=1, downsample=4, channels=32, latent_channels=32,
                                           quantizer="fsq", quantizer_kwargs={"levels": [8, 5, 5, 5]})  # fmt: skip
    fit = tokenizer.fit(images, steps=800, batch_size=32, learning_rate=3e-3, log_every=200)
    with torch.no_grad():
        tokens = np.asarray(tokenizer.tokenize(images)).reshape(len(images), 4, 4)
    write_label_shards(folder, labels, tokens, files=2)
    times["tokenizer"] = time.perf_counter() - started

    layout = VocabularyLayout([ModalityVocab("label", 10, tokens_per_segment=1),
                               ModalityVocab.from_tokenizer(tokenizer, shape=(4, 4))])  # fmt: skip
    torch.manual_seed(seed)
    model = LoomModel(layout, DIGITS_LLAMA)
    dataset = TokenShards(str(folder), layout, label_column="label", condition_dropout=0.1, seed=seed)
    metrics = train(model, dataset, steps, batch_size=64, learning_rate=2e-3, warmup_steps=50, log_every=100)
    times["train"] = metrics["seconds"]

    t = time.perf_counter()
    requested = np.repeat(np.arange(10), samples_per_class)
    prompts = [[("label", [int(c)])] for c in requested]
    out = generate(model, prompts, segments=[("image", 16)], sampler=Sampler([Temperature(0.7), TopK(20)], seed=seed),
                   cfg=CFG(2.0, condition=("label",)))  # fmt: skip
    ids = np.stack([row[1].ids for row in out.segments()])  # (N, 4, 4) local image ids
    with torch.no_grad():
        generated = np.asarray(tokenizer.decode_tokens(torch.from_numpy(ids)))  # (N, 16, 16, 1) uint8
    times["generate"] = time.perf_counter() - t

    digits = load_digits()
    classifier = SVC(gamma=0.001).fit(digits.data, digits.target)  # the real 8x8 digits, values 0..16

    def to_8x8(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 8, 2, 8, 2).astype(np.float64).mean(axis=(2, 4)).reshape(len(x), 64) * 16 / 255

    with torch.no_grad():
        reconstructed = np.asarray(tokenizer.decode_tokens(torch.from_numpy(tokens)))
    return {
        "accuracy": float((classifier.predict(to_8x8(generated)) == requested).mean()),
        "copies": float(np.mean([any((g == tokens).all(axis=(1, 2))) for g in ids])),  # grids seen in training
        "reconstruction_accuracy": float((classifier.predict(to_8x8(reconstructed)) == labels).mean()),
        "tokenizer_psnr": fit.get("psnr"), "final_loss": float(np.mean(metrics["losses"][-50:])),
        "seconds": {k: round(v, 1) for k, v in times.items()}, "total_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


@pytest.mark.slow
def test_generated_digits_are_recognised_as_the_requested_class(tmp_path):
    result = digits_quality(tmp_path / "tokens")
    print(result)
    assert result["reconstruction_accuracy"] > 0.95
    assert result["accuracy"] >= 0.9


if __name__ == "__main__":  # python tests/unit/generators/test_training.py [steps [threads]]: the figures
    import logging
    import sys
    import tempfile
    from pathlib import Path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    steps, threads = (int(a) for a in (sys.argv[1:] + ["800", "1"])[:2])
    with tempfile.TemporaryDirectory() as d:
        print(digits_quality(Path(d) / "tokens", steps=steps, threads=threads))

"""The demo's generation half: train the class-conditional models on the token shards, then generate and judge.

    train_generators(root, fast, executor)   # next_token/ (LoomModel) and next_scale/ (NextScaleModel) + generator.json
    evaluate_generation(root, fast, executor)   # every strategy: a grid of all ten classes, classifier accuracy,
                                                # images/s and forward passes

Both models read the same shards (label, image_tokens, image_scales) through `TokenShards`, with condition
dropout 0.1 for classifier-free guidance. On Ray the two trainings run at once as two 1-CPU tasks; locally one
after the other. A model folder that exists is reused (the resume path of a second demo run). The judge is an
SVM fitted on sklearn's real 8x8 digits: the share of generated images it assigns to the requested class.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenloom.pipelines.progress import Progress

logger = logging.getLogger(__name__)

BACKBONE = {
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
}  # fmt: skip
MODELS = {  # folder: (tokenizer folder, token column, learning rate)
    "next_token": ("tokenizer", "image_tokens", 2e-3),
    "next_scale": ("tokenizer_multiscale", "image_scales", 5e-3),  # at 2e-3 it needs ~3x the steps to follow the class
}
STRATEGIES = [  # (report name, strategy, guidance scale)
    ("next-token", "next_token", None),
    ("next-token + CFG", "next_token", 2.0),
    ("speculative Jacobi + CFG", "speculative", 2.0),
    ("next-scale + CFG", "next_scale", 2.0),
]


def train_steps(fast: bool) -> int:
    return 250 if fast else 800


def train_one(root: str, name: str, steps: int, board: Any = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one model of the demo; ``board``: a Ray actor that collects progress."""
    import torch

    from tokenloom.generators import LoomModel, ModalityVocab, VocabularyLayout
    from tokenloom.generators.next_scale import NextScaleModel
    from tokenloom.generators.training import TokenShards, train
    from tokenloom.tokenizers import load_tokenizer

    torch.set_num_threads(1)  # one core per training: the two run side by side on 2 cores
    folder, (tokenizer_folder, column, learning_rate) = Path(root) / name, MODELS[name]
    state_path = Path(root) / "checkpoints" / name / "trainer_state.json"
    if (folder / "config.json").exists() and state_path.exists():
        state = json.loads(state_path.read_text())
        if board is not None:
            board.set.remote(name, state["step"])
        return {"losses": state["losses"], "steps": state["step"], "reused": True, "seconds": 0.0}
    tokenizer = load_tokenizer(Path(root) / tokenizer_folder)
    tokens = int(sum(s * s for s in tokenizer.scales)) if name == "next_scale" else None
    image = ModalityVocab.from_tokenizer(tokenizer, shape=(4, 4)) if tokens is None else \
        ModalityVocab.from_tokenizer(tokenizer, tokens_per_segment=tokens)  # fmt: skip
    layout = VocabularyLayout([ModalityVocab("label", 10, tokens_per_segment=1), image])
    torch.manual_seed(0)
    model: Any = LoomModel(layout, BACKBONE)
    if name == "next_scale":
        model = NextScaleModel.from_tokenizer(model, tokenizer)
    dataset = TokenShards(str(Path(root) / "tokens"), layout, label_column="label", token_column=column,
                          condition_dropout=0.1, seed=0)  # fmt: skip

    def on_step(step: int, loss: float) -> None:
        if board is not None and (step % 10 == 0 or step == steps):
            board.set.remote(name, step)

    metrics = train(model, dataset, steps, batch_size=64, learning_rate=learning_rate, warmup_steps=50, log_every=0,
                    checkpoint_dir=str(state_path.parent), on_step=on_step)  # fmt: skip
    model.save_pretrained(folder)
    return {"losses": metrics["losses"], "steps": metrics["steps"], "reused": False, "seconds": metrics["seconds"]}


class _Board:
    """Progress of the training tasks, read by the driver's bars."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def set(self, name: str, step: int) -> None:
        self.steps[name] = step

    def get(self) -> dict[str, int]:
        return dict(self.steps)


def train_generators(root: Path, fast: bool, executor: str) -> dict[str, Any]:
    """Both models, then generator.json; returns per model its final loss, steps and seconds."""
    from tokenloom.generators.bundle import GeneratorBundle
    from tokenloom.pipelines.demo import plot_losses

    steps = train_steps(fast)
    logger.info("[4/6] training the class-conditional models (%s, %d steps each)", ", ".join(MODELS), steps)
    bars = {name: Progress(f"train {name}", steps, unit="steps") for name in MODELS}
    results: dict[str, Any] = {}
    if executor == "ray":
        import ray

        board = ray.remote(num_cpus=0)(_Board).remote()
        task = ray.remote(num_cpus=1)(train_one)
        pending = {task.remote(str(root), name, steps, board): name for name in MODELS}
        while pending:
            done, _ = ray.wait(list(pending), timeout=0.5)
            for name, step in ray.get(board.get.remote()).items():
                bars[name].update_to(step)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
        ray.kill(board)
    else:
        for name in MODELS:
            results[name] = train_one(str(root), name, steps)
            bars[name].update_to(results[name]["steps"])
    for bar in bars.values():
        bar.__exit__(None, None, None)
    GeneratorBundle.write(root, {
        "next_token": {"model": "next_token", "tokenizer": "tokenizer"},
        "speculative": {"model": "next_token", "tokenizer": "tokenizer", "window": 4},
        "next_scale": {"model": "next_scale", "tokenizer": "tokenizer_multiscale"},
    }, defaults={"temperature": 0.7, "top_k": 20})  # fmt: skip
    for name, r in results.items():
        plot_losses(r["losses"], root / f"{name}_loss.png", f"{name} training loss")
    return {name: {"final_loss": round(float(np.mean(r["losses"][-20:])), 4), "steps": r["steps"],
                   "first_loss": round(float(np.mean(r["losses"][:20])), 4),
                   "seconds": round(r["seconds"], 1), "reused": r["reused"]} for name, r in results.items()}  # fmt: skip


def digit_judge() -> Any:
    """An SVM on sklearn's real 8x8 digits, and a function that scores 16x16 uint8 images with it."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    classifier = SVC(gamma=0.001).fit(digits.data, digits.target)

    def predict(images: np.ndarray) -> np.ndarray:  # (N, 16, 16[, 1]) uint8 -> (N,) classes
        x = images.reshape(len(images), 8, 2, 8, 2).astype(np.float64).mean(axis=(2, 4)).reshape(len(images), 64)
        return classifier.predict(x * 16 / 255)

    return predict


def evaluate_generation(root: Path, fast: bool, executor: str) -> dict[str, Any]:
    """Generate every class with every strategy through `load_pipeline`; accuracy, speed, forward passes."""
    from PIL import Image

    from tokenloom.pipelines.demo import image_grid
    from tokenloom.pipelines.generation import load_pipeline

    per_class = 6 if fast else 20
    requested = np.repeat(np.arange(10), per_class)
    judge = digit_judge()
    logger.info("[5/6] generating %d digits per strategy (%s executor)", len(requested), executor)
    figures: dict[str, Any] = {}
    grids: dict[str, np.ndarray] = {}
    with load_pipeline(root, executor=executor) as gen:
        gen.generate(label=[0, 1], strategy="next_token")  # load the models before timing
        gen.generate(label=[0, 1], strategy="next_scale")
        for title, strategy, cfg in STRATEGIES:
            started = time.perf_counter()
            out = gen.generate(label=requested, strategy=strategy, cfg=cfg)
            seconds = time.perf_counter() - started
            accuracy = float((judge(out.images) == requested).mean())
            file = f"generated_{strategy}{'_cfg' if cfg else ''}.png"
            cells = out.images[..., 0].reshape(10, per_class, *out.images.shape[1:3])
            grids[title] = cells
            grid = image_grid([list(row[:10]) for row in cells])
            Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(root / file)
            figures[title] = {"strategy": strategy, "cfg": cfg, "accuracy": round(accuracy, 3), "images": len(requested),
                              "images_per_second": round(len(requested) / seconds, 1),
                              "forward_passes": out.forward_passes, "tokens_per_image": int(out.ids.shape[1]),
                              "picture": file}  # fmt: skip
            logger.info("%s: accuracy %.3f, %.1f images/s, %d forward passes", title, accuracy,
                        len(requested) / seconds, out.forward_passes)  # fmt: skip
    _side_by_side(root / "generated.png", grids)
    return {"per_class": per_class, "strategies": figures, "picture": "generated.png"}


def _side_by_side(path: Path, grids: dict[str, np.ndarray], n: int = 6) -> None:
    """One row per class: real digits, then next-token + CFG, then next-scale + CFG (n of each)."""
    from PIL import Image

    from tokenloom.nodes.datasets import load_digits_images
    from tokenloom.pipelines.demo import image_grid

    images, labels = load_digits_images(16)
    real = [images[np.flatnonzero(labels == d)[:n], :, :, 0] for d in range(10)]
    blank = np.full((16, 16), 96, dtype=np.uint8)  # an empty cell between the groups
    rows = [list(real[d]) + [blank] + list(grids["next-token + CFG"][d][:n]) + [blank]
            + list(grids["next-scale + CFG"][d][:n]) for d in range(10)]  # fmt: skip
    grid = image_grid(rows)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)

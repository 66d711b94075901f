"""``tokenloom demo``: the end-to-end example over sklearn's bundled digits, offline, on 2 CPU cores.

1. digits -> Parquet with labels (a pipeline: ``datasets/sklearn_digits`` -> ``io/write_parquet``);
2. fit two tiny image tokenizers in this process and save them: FSQ (4x4 codes, for next-token decoding) and
   a VAR multi-scale one (scales 1, 2, 3, 4: 30 codes, for next-scale decoding);
3. tokenize the set with both as a resumable batch job from ``examples/digits_tokenize.yaml`` (tokenize,
   detokenize, reconstruction error; shards + error table);
4. train a class-conditional shared AR model per tokenizer on the shards (`demo_generation`);
5. generate every class with next-token, speculative Jacobi and next-scale decoding (with CFG) through
   ``tl.load_pipeline(out)`` (on Ray: long-lived actors in a compiled graph), judge them with an SVM;
6. write a report (``report.md`` + ``report.json`` + pictures of real, reconstructed and generated digits).

Every step reuses what an earlier run left in the output folder, so a second run resumes; the output folder
is also a generator folder (generator.json) that ``tl.load_pipeline`` opens.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenloom.nodes.datasets import SklearnDigits, load_digits_images
from tokenloom.nodes.sinks import WriteParquet, read_output
from tokenloom.pipelines.config import pipeline_from_config
from tokenloom.pipelines.demo_generation import evaluate_generation, train_generators
from tokenloom.pipelines.graph import Pipeline

logger = logging.getLogger(__name__)

EXAMPLE = "digits_tokenize.yaml"


def example_path(name: str) -> Path:
    """An example file: ./examples/<name> when run from a checkout, else the one beside the package source."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / "examples" / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"examples/{name} not found; run the demo from a tokenloom checkout")


def run_demo(out: str, fast: bool = False, executor: str = "ray") -> int:
    import torch

    started = time.perf_counter()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # One torch thread in the driver (the tokenizer fits): the Ray workers take the other core, and two
    # OpenMP threads on cores that are busy elsewhere wait on each other far more than they compute.
    torch.set_num_threads(1)
    ray_started = _start_ray() if executor == "ray" else False
    try:
        figures: dict[str, Any] = {"executor": executor, "fast": fast}
        figures["data"] = _write_digits(root / "data", executor)
        figures["tokenizer"] = _fit_tokenizer(root / "tokenizer", fast)
        figures["tokenizer_multiscale"] = _fit_multiscale_tokenizer(root / "tokenizer_multiscale", fast)
        figures["tokenize"] = _tokenize(root, executor)
        figures["training"] = train_generators(root, fast, executor)
        figures["generation"] = evaluate_generation(root, fast, executor)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    figures["seconds"] = round(time.perf_counter() - started, 1)
    _write_report(root, figures)
    print(f"\nreport: {root / 'report.md'}")
    return 0 if figures["tokenize"]["reconciles"] else 1


def _start_ray() -> bool:
    from tokenloom.pipelines.ray_executor import ensure_ray

    return ensure_ray()


def _write_digits(path: Path, executor: str) -> dict[str, Any]:
    logger.info("[1/6] digits -> Parquet at %s", path)
    p = Pipeline("digits-to-parquet")
    rows = p.source(SklearnDigits(size=16, rows_per_fragment=256))
    p.sink(WriteParquet(path=str(path), batch_size=512), rows)
    report = p.run(executor=executor, resume=(path / "_manifest").exists())
    return {"rows": report.rows_written + report.rows_skipped, "errors": report.rows_errors}


def _fit_tokenizer(path: Path, fast: bool) -> dict[str, Any]:
    import torch

    from tokenloom.tokenizers import load_tokenizer
    from tokenloom.tokenizers.image_vq import ImageVQTokenizer, evaluate

    images, _ = load_digits_images(16)
    if (path / "config.json").exists():
        logger.info("[2/6] tokenizer: reusing %s", path)
        tokenizer = load_tokenizer(path)
        metrics = evaluate(tokenizer, images)
        return {"psnr_db": round(metrics["psnr"], 2), "codebook_usage": round(metrics["codebook_usage"], 3),
                "reused": True, "vocab_size": tokenizer.vocab_size}
    logger.info("[2/6] fitting a tiny FSQ image tokenizer on %d digits", len(images))
    torch.manual_seed(0)
    tokenizer = ImageVQTokenizer(in_channels=1, downsample=4, channels=32, latent_channels=32, quantizer="fsq",
                                 quantizer_kwargs={"levels": [8, 5, 5, 5]})
    metrics = tokenizer.fit(images, steps=300 if fast else 800, batch_size=32, learning_rate=3e-3, log_every=100)
    tokenizer.save_pretrained(path)
    plot_losses(metrics["losses"], path.parent / "tokenizer_loss.png", "tokenizer loss")
    return {"psnr_db": round(metrics["psnr"], 2), "codebook_usage": round(metrics["codebook_usage"], 3),
            "fit_seconds": round(metrics["seconds"], 1), "steps": metrics["steps"], "reused": False,
            "vocab_size": tokenizer.vocab_size}


def _fit_multiscale_tokenizer(path: Path, fast: bool) -> dict[str, Any]:
    import torch

    from tokenloom.tokenizers import load_tokenizer
    from tokenloom.tokenizers.image_multiscale import ImageMultiScaleTokenizer
    from tokenloom.tokenizers.image_vq import evaluate

    images, _ = load_digits_images(16)
    if (path / "config.json").exists():
        logger.info("[2/6] multi-scale tokenizer: reusing %s", path)
        tokenizer = load_tokenizer(path)
        metrics, reused = evaluate(tokenizer, images), True
    else:
        logger.info("[2/6] fitting a tiny multi-scale (VAR) tokenizer on %d digits", len(images))
        torch.manual_seed(0)
        tokenizer = ImageMultiScaleTokenizer(in_channels=1, downsample=4, channels=32, latent_channels=32,
                                             codebook_size=512, dim=16, scales=(1, 2, 3, 4))  # fmt: skip
        metrics = tokenizer.fit(images, steps=300 if fast else 800, batch_size=32, learning_rate=3e-3, log_every=100)
        tokenizer.save_pretrained(path)
        reused = False
    return {"psnr_db": round(metrics["psnr"], 2), "codebook_usage": round(metrics["codebook_usage"], 3),
            "reused": reused, "vocab_size": tokenizer.vocab_size, "scales": tokenizer.scales}


def _tokenize(root: Path, executor: str) -> dict[str, Any]:
    logger.info("[3/6] tokenizing as a batch job (%s executor) from examples/%s", executor, EXAMPLE)
    overrides = [f"source.path={root / 'data'}", f"nodes.tokenize.path={root / 'tokenizer'}",
                 f"nodes.detokenize.path={root / 'tokenizer'}", f"nodes.tokenize_scales.path={root / 'tokenizer_multiscale'}",
                 f"sink.path={root / 'tokens'}"]
    pipeline = pipeline_from_config(example_path(EXAMPLE), overrides)
    report = pipeline.run(executor=executor, resume=(root / "tokens" / "_manifest").exists())
    print(report.summary())
    table = read_output(str(root / "tokens"))
    mse = float(np.mean(table.column("reconstruction_mse").to_numpy()))
    tokens = table.column("image_tokens").combine_chunks().to_numpy_ndarray()
    return {
        "rows_in": report.rows_in, "rows_written": report.rows_written, "rows_errors": report.rows_errors,
        "rows_skipped": report.rows_skipped, "reconciles": report.reconciles, "rows_in_output": table.num_rows,
        "seconds": round(report.seconds, 2), "tokens_per_image": int(tokens[0].size),
        "psnr_db": round(10 * math.log10(255.0**2 / mse), 2) if mse > 0 else float("inf"),
        "codes_used": int(len(np.unique(tokens))),
        "nodes": {k: v.as_dict() for k, v in report.nodes.items()},
    }


def _write_report(root: Path, figures: dict[str, Any]) -> None:
    logger.info("[6/6] report at %s", root / "report.md")
    (root / "report.json").write_text(json.dumps(figures, indent=2))
    picture = _digits_picture(root)
    tok, ms, job = figures["tokenizer"], figures["tokenizer_multiscale"], figures["tokenize"]
    lines = [
        "# tokenloom demo: digits", "",
        f"Executor: {figures['executor']}{' (--fast settings)' if figures['fast'] else ''}; "
        f"whole demo {figures['seconds']} s. Every figure below is computed by this run.", "",
        "## Tokenizers and the batch job", "",
        "| figure | value |", "|---|---|",
        f"| FSQ tokenizer PSNR (all digits, dB) | {tok['psnr_db']} |",
        f"| FSQ codebook usage | {100 * tok['codebook_usage']:.1f}% of {tok['vocab_size']} |",
        f"| multi-scale tokenizer PSNR (dB), scales {ms['scales']} | {ms['psnr_db']} |",
        f"| multi-scale codebook usage | {100 * ms['codebook_usage']:.1f}% of {ms['vocab_size']} |",
        f"| tokens per image (FSQ) | {job['tokens_per_image']} |",
        f"| batch job PSNR from the shards (dB) | {job['psnr_db']} |",
        f"| rows in = written + errors | {job['rows_in']} = {job['rows_written']} + {job['rows_errors']} "
        f"({'ok' if job['reconciles'] else 'MISMATCH'}; {job['rows_skipped']} skipped as already written) |",
        f"| rows in the output | {job['rows_in_output']} |", "",
    ]
    if picture:
        lines += ["Each row: eight real digits of one class (left) and their reconstruction from tokens (right):", "",
                  f"![digits]({picture})", ""]
    if (root / "tokenizer_loss.png").exists():
        lines += ["![tokenizer loss](tokenizer_loss.png)", ""]
    training = figures.get("training", {})
    if training:
        lines += ["## Class-conditional models", "", "| model | steps | final loss | seconds |", "|---|---|---|---|"]
        lines += [f"| {name} | {t['steps']} | {t['final_loss']} | {t['seconds']}{' (reused)' if t['reused'] else ''} |"
                  for name, t in training.items()]
        lines += [""] + [f"![{name} loss]({name}_loss.png)" for name in training if (root / f"{name}_loss.png").exists()]
        lines += [""]
    generation = figures.get("generation", {})
    if generation:
        n = generation["per_class"]
        lines += ["## Generated digits", "",
                  f"{n} images per class per strategy; accuracy = share an SVM fitted on sklearn's real 8x8 digits "
                  "assigns to the requested class.", "",
                  "| strategy | accuracy | images/s | forward passes (whole batch) | tokens per image |",
                  "|---|---|---|---|---|"]
        for title, g in generation["strategies"].items():
            lines.append(f"| {title} | {100 * g['accuracy']:.1f}% | {g['images_per_second']} | {g['forward_passes']} "
                         f"| {g['tokens_per_image']} |")
        lines += [""]
        lines += ["One row per class: real digits, then next-token + CFG, then next-scale + CFG:", "",
                  f"![generated]({generation['picture']})", ""]
        for title, g in generation["strategies"].items():
            lines += [f"{title} (one row per class, 0 to 9):", "", f"![{title}]({g['picture']})", ""]
    (root / "report.md").write_text("\n".join(lines))


def _digits_picture(root: Path) -> str | None:
    try:
        from PIL import Image
    except ImportError:
        logger.warning("Pillow is not installed (pip install 'tokenloom[images]'): the report has no picture")
        return None
    from tokenloom.tokenizers import load_tokenizer

    images, labels = load_digits_images(16)
    tokenizer = load_tokenizer(root / "tokenizer")
    chosen = np.concatenate([np.flatnonzero(labels == d)[:8] for d in range(10)])
    real = images[chosen]
    decoded = tokenizer.decode_tokens(tokenizer.tokenize(real))
    decoded = np.asarray(decoded)
    grid = image_grid([[real[8 * d + i, :, :, 0] for i in range(8)] + [decoded[8 * d + i, :, :, 0] for i in range(8)]
                       for d in range(10)])
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(root / "digits.png")
    return "digits.png"


def image_grid(rows: list[list[np.ndarray]], pad: int = 2, background: int = 96) -> np.ndarray:
    """Equally sized grayscale images (H, W) in rows, with a gap between cells: (rows*(H+pad), cols*(W+pad))."""
    h, w = rows[0][0].shape
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = image
    return grid


def plot_losses(losses: list[float], path: Path, title: str = "training loss") -> None:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return
    width, height, pad = 480, 240, 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = np.log10(np.maximum(np.asarray(losses, dtype=np.float64), 1e-12))
    lo, hi = float(values.min()), float(values.max()) or 1.0
    xs = pad + (width - 2 * pad) * np.arange(len(values)) / max(len(values) - 1, 1)
    ys = height - pad - (height - 2 * pad) * (values - lo) / max(hi - lo, 1e-9)
    draw.line(list(zip(xs.tolist(), ys.tolist())), fill="navy", width=1)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="gray")
    draw.text((pad, 8), f"{title} (log10), {len(values)} steps: {losses[0]:.4f} -> {losses[-1]:.4f}", fill="black")
    image.save(path)

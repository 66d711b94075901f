"""Decoding throughput: our next-token loop against HF ``generate()`` on the same weights, speculative Jacobi
decoding against plain next-token decoding, and next-scale (VAR) against raster decoding of 16x16 images.

    python bench/decode.py                 # -> bench/results/decode.json, Markdown tables on stdout
    python bench/decode.py --quick         # 64 new tokens, one repeat (a smoke run)

Next-token vs HF: a ~11M-parameter Llama (hidden 256, 8 layers, 4 heads, intermediate 1024) over a layout with
one 4096-code "text" modality and one shared full-vocabulary head, so HF's ``LlamaForCausalLM`` can hold exactly
the same weights (its ``lm_head`` is our head). Random weights (no download); prompts are 16 random codes.
Both sides decode greedily 256 new tokens with a KV cache in inference mode, at batch 1 and 16: we generate
256 tokens under the layout's grammar (the text head may end its segment; on these weights it does not) and
HF runs with no EOS; ``same_ids_as_hf`` checks that both produced the same ids. Tokens/s: 256 x batch / s.
"ours" is `generate` with its default backend (the lean `FastLlama` path); "ours_hf_backend" is the same loop
over the HF backbone and ``DynamicCache`` (``backend="hf"``), to show what the lean path itself brings.
Timings are the median of ``--repeats`` runs after one warm-up (the contenders interleaved), with ``--threads``
torch threads: 1 by default, because the 2-core machine is shared (load average 2-10 while we worked) and with
2 threads every op waits for its descheduled second thread: we saw both loops run ~25x slower (32 tokens at
batch 1: 9.5 s against 0.38 s). Each run records wall time and the process's CPU time: with one thread the
latter is the time it actually ran, which a busy neighbour (who deschedules us) disturbs less; both speedups
are reported. Timings are noisy; the JSON records the load average before and after.

Speculative Jacobi decoding runs greedily (window 8, drafts initialised by repetition) against plain next-token
decoding (both on the default backend, interleaved); ``same_output`` checks that their greedy outputs are equal.

Next-scale vs raster: one ~18M-parameter Llama (hidden 384, 8 layers, 6 heads, intermediate 1024) over a layout
with a 10-class "label" modality and a 4096-code "image" modality, class-conditional, untrained (random weights
time the same as trained ones). Next-scale wraps it in `NextScaleModel` with an untrained ``image/multiscale``
tokenizer (VAR's schedule 1..16, 680 tokens, 10 forward passes); raster runs `generate` with
``segments=[("image", 256)]`` (256 forward passes; also timed on ``backend="hf"``, the loop before the lean
path) and an untrained ``image/vq`` tokenizer. Both tokenizers
share one conv trunk size (128x128 images, downsample 8: a 16x16 final grid, 32 channels, codebook 4096,
code dim 32). Both sample with top-k 600, no guidance. Per image: the AR part (`generate_next_scale`, which
includes the quantizer's per-scale f_hat updates, or `generate`) and the detokenizer (each tokenizer's
``decode_tokens`` of the generated ids), as medians of interleaved repeats, divided by the batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Run as a script, this file's folder leads sys.path and bench/tokenizers.py would hide the HF `tokenizers` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from tokenloom.generators import (
    LoomModel,
    ModalityVocab,
    Sampler,
    TopK,
    VocabularyLayout,
    generate,
)
from tokenloom.generators.next_scale import NextScaleModel, generate_next_scale
from tokenloom.generators.speculative import SpeculativeJacobi
from tokenloom.tokenizers.image_multiscale import ImageMultiScaleTokenizer
from tokenloom.tokenizers.image_vq import ImageVQTokenizer

BACKBONE = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
CODES = 4096
PROMPT_LENGTH = 16
IMAGE_BACKBONE = {
    "model_type": "llama",
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "num_key_value_heads": 6,
    "max_position_embeddings": 1024,
}
IMAGE_TOKENIZER = {"downsample": 8, "channels": 32, "latent_channels": 32}  # 128x128 images, a 16x16 grid
IMAGE_CODES, CODE_DIM, CLASSES, TOP_K = 4096, 32, 10, 600


def build(seed: int = 0) -> tuple[LoomModel, Any]:
    """Our model and an HF LlamaForCausalLM sharing its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layout = VocabularyLayout([ModalityVocab("text", CODES)])
    torch.manual_seed(seed)
    ours = LoomModel(layout, BACKBONE, shared_head=True).eval()
    config = LlamaConfig(**{k: v for k, v in BACKBONE.items() if k != "model_type"}, vocab_size=layout.vocab_size)
    hf = LlamaForCausalLM(config).eval()
    hf.model.load_state_dict(ours.backbone.state_dict())
    hf.lm_head.weight = ours.head.weight
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = layout.pad_id
    return ours, hf


def prompts(layout: VocabularyLayout, batch: int, seed: int = 0) -> torch.Tensor:
    """(B, L) prompts that end inside an open text segment: <bos> <begin:text> 16 codes."""
    g = torch.Generator().manual_seed(seed)
    rows = [layout.pack([("text", torch.randint(CODES, (PROMPT_LENGTH,), generator=g))], add_eos=False).ids_L[:-1]
            for _ in range(batch)]
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


@dataclass
class Timing:
    """Medians over the repeats: wall seconds, and CPU seconds of this process (with one torch thread, the time
    it actually ran: on the shared machine a descheduled process still counts wall time); the last result."""

    wall_s: float
    cpu_s: float
    out: Any


def timed_together(fns: list[Callable[[], Any]], repeats: int) -> list[Timing]:
    """Each call ``repeats`` times after a warm-up, interleaved (a, b, a, b, ...) so load changes hit them alike."""
    outs = [fn() for fn in fns]
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            outs[i] = fn()
            cpu[i].append(time.process_time() - cpu_start)
            wall[i].append(time.perf_counter() - wall_start)
    return [Timing(statistics.median(w), statistics.median(c), out) for w, c, out in zip(wall, cpu, outs)]


def bench_next_token(ours: LoomModel, hf: Any, batch: int, new: int, repeats: int) -> dict[str, Any]:
    ids_BL = prompts(ours.layout, batch)

    def hf_call() -> torch.Tensor:
        with torch.inference_mode():
            mask_BL = torch.ones_like(ids_BL)
            return hf.generate(ids_BL, attention_mask=mask_BL, max_new_tokens=new, do_sample=False, use_cache=True)

    def ours_call() -> Any:
        return generate(ours, ids_BL, max_new_tokens=new)

    def ours_hf_backend_call() -> Any:
        return generate(ours, ids_BL, max_new_tokens=new, backend="hf")

    ours_t, hf_t, hf_backend_t = timed_together([ours_call, hf_call, ours_hf_backend_call], repeats)
    tokens = batch * new
    return {
        "batch": batch,
        "new_tokens": new,
        "ours_tokens_per_s": round(tokens / ours_t.wall_s, 1),
        "hf_tokens_per_s": round(tokens / hf_t.wall_s, 1),
        "speedup": round(hf_t.wall_s / ours_t.wall_s, 2),
        "speedup_cpu_time": round(hf_t.cpu_s / ours_t.cpu_s, 2),
        "ours_s": round(ours_t.wall_s, 3),
        "hf_s": round(hf_t.wall_s, 3),
        "ours_cpu_s": round(ours_t.cpu_s, 3),
        "hf_cpu_s": round(hf_t.cpu_s, 3),
        "ours_hf_backend_tokens_per_s": round(tokens / hf_backend_t.wall_s, 1),
        "ours_hf_backend_s": round(hf_backend_t.wall_s, 3),
        "ours_hf_backend_cpu_s": round(hf_backend_t.cpu_s, 3),
        "ours_forward_passes": ours_t.out.forward_passes,
        "same_ids_as_hf": bool(torch.equal(ours_t.out.sequences_BL, hf_t.out)),
        "hf_backend_same_ids_as_hf": bool(torch.equal(hf_backend_t.out.sequences_BL, hf_t.out)),
    }


def bench_speculative(ours: LoomModel, batch: int, new: int, repeats: int, window: int) -> dict[str, Any]:
    """Greedy speculative Jacobi decoding against plain next-token decoding, interleaved, same prompts."""
    ids_BL = prompts(ours.layout, batch)
    strategy = SpeculativeJacobi(max_new_tokens=new, window=window, init="repeat")
    plain_t, spec_t = timed_together(
        [lambda: generate(ours, ids_BL, max_new_tokens=new), lambda: generate(ours, ids_BL, strategy=strategy)],
        repeats,
    )
    return {
        "batch": batch,
        "new_tokens": new,
        "window": window,
        "sampler": "greedy",
        "plain_forward_passes": plain_t.out.forward_passes,
        "speculative_forward_passes": spec_t.out.forward_passes,
        "accepted_per_pass": round(strategy.accepted_per_pass, 2),
        "plain_s": round(plain_t.wall_s, 3),
        "speculative_s": round(spec_t.wall_s, 3),
        "plain_cpu_s": round(plain_t.cpu_s, 3),
        "speculative_cpu_s": round(spec_t.cpu_s, 3),
        "same_output": bool(torch.equal(plain_t.out.sequences_BL, spec_t.out.sequences_BL)),
    }


def build_image(seed: int = 0) -> tuple[LoomModel, NextScaleModel, Any, Any]:
    """One class-conditional Llama, its next-scale wrapper, and the two (untrained) image tokenizers."""
    torch.manual_seed(seed)
    multiscale = ImageMultiScaleTokenizer(**IMAGE_TOKENIZER, codebook_size=IMAGE_CODES, dim=CODE_DIM).eval()
    vq_options = {"codebook_size": IMAGE_CODES, "dim": CODE_DIM}
    raster = ImageVQTokenizer(**IMAGE_TOKENIZER, quantizer="vq", quantizer_kwargs=vq_options).eval()
    grid = multiscale.scales[-1]
    layout = VocabularyLayout(
        [ModalityVocab("label", CLASSES, tokens_per_segment=1), ModalityVocab("image", IMAGE_CODES, shape=(grid, grid))]
    )
    loom = LoomModel(layout, IMAGE_BACKBONE).eval()
    next_scale = NextScaleModel.from_tokenizer(loom, multiscale).eval()
    return loom, next_scale, multiscale, raster


def bench_next_scale_vs_raster(
    loom: LoomModel, next_scale: NextScaleModel, multiscale: Any, raster: Any, batch: int, repeats: int
) -> dict[str, Any]:
    """AR part and detokenizer, per image, of next-scale and raster decoding at one batch size."""
    labels = [k % CLASSES for k in range(batch)]
    prompts = [[("label", [k])] for k in labels]
    grid = multiscale.scales[-1]
    lo = loom.layout.range("image")[0]
    state: dict[str, Any] = {}

    def raster_ar() -> Any:
        out = generate(loom, prompts, segments=[("image", grid * grid)], sampler=Sampler([TopK(TOP_K)], seed=0))
        state["raster_ids"] = (out.new_ids_BL[:, 1 : 1 + grid * grid] - lo).reshape(batch, grid, grid)
        return out

    def raster_hf_backend_ar() -> Any:
        sampler = Sampler([TopK(TOP_K)], seed=0)
        return generate(loom, prompts, segments=[("image", grid * grid)], sampler=sampler, backend="hf")

    def raster_detokenize() -> Any:
        with torch.inference_mode():
            return raster.decode_tokens(state["raster_ids"])

    def next_scale_ar() -> Any:
        out = generate_next_scale(next_scale, multiscale, labels, sampler=Sampler([TopK(TOP_K)], seed=0))
        state["next_scale_ids"] = out.ids
        return out

    def next_scale_detokenize() -> Any:
        with torch.inference_mode():
            return multiscale.decode_tokens(state["next_scale_ids"])

    raster_t, raster_detok_t, ns_t, ns_detok_t, raster_hf_t = timed_together(
        [raster_ar, raster_detokenize, next_scale_ar, next_scale_detokenize, raster_hf_backend_ar], repeats
    )
    size = grid * IMAGE_TOKENIZER["downsample"]
    assert raster_detok_t.out.shape == ns_detok_t.out.shape == (batch, size, size, 3)

    def per_image(t: Timing) -> float:
        return round(t.wall_s / batch, 4)

    return {
        "batch": batch,
        "raster_forward_passes": raster_t.out.forward_passes,
        "next_scale_forward_passes": ns_t.out.forward_passes,
        "raster_tokens": grid * grid,
        "next_scale_tokens": sum(s * s for s in multiscale.scales),
        "raster_ar_s_per_image": per_image(raster_t),
        "next_scale_ar_s_per_image": per_image(ns_t),
        "ar_speedup": round(raster_t.wall_s / ns_t.wall_s, 2),
        "ar_speedup_cpu_time": round(raster_t.cpu_s / ns_t.cpu_s, 2),
        "raster_detokenizer_s_per_image": per_image(raster_detok_t),
        "next_scale_detokenizer_s_per_image": per_image(ns_detok_t),
        "raster_total_s_per_image": round((raster_t.wall_s + raster_detok_t.wall_s) / batch, 4),
        "next_scale_total_s_per_image": round((ns_t.wall_s + ns_detok_t.wall_s) / batch, 4),
        "total_speedup": round((raster_t.wall_s + raster_detok_t.wall_s) / (ns_t.wall_s + ns_detok_t.wall_s), 2),
        "raster_ar_cpu_s_per_image": round(raster_t.cpu_s / batch, 4),
        "next_scale_ar_cpu_s_per_image": round(ns_t.cpu_s / batch, 4),
        "raster_hf_backend_ar_s_per_image": per_image(raster_hf_t),
        "ar_speedup_vs_raster_hf_backend": round(raster_hf_t.wall_s / ns_t.wall_s, 2),
        "raster_same_ids_on_both_backends": bool(torch.equal(raster_t.out.sequences_BL, raster_hf_t.out.sequences_BL)),
        "image_shape": [size, size, 3],
    }


def machine() -> dict[str, Any]:
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--image-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "decode.json"))
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 64, 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ours, hf = build()
    params = sum(p.numel() for p in ours.parameters())
    next_token = [bench_next_token(ours, hf, b, args.new_tokens, args.repeats) for b in args.batches]
    speculative = [bench_speculative(ours, b, args.new_tokens, args.repeats, args.window) for b in args.batches]
    loom, next_scale, multiscale, raster = build_image()
    images = [bench_next_scale_vs_raster(loom, next_scale, multiscale, raster, b, args.repeats) for b in args.image_batches]
    result = {
        "model": {**BACKBONE, "codes": CODES, "parameters": params, "prompt_length": PROMPT_LENGTH + 2},
        "threads": args.threads,
        "repeats": args.repeats,
        "next_token_vs_hf_generate": next_token,
        "speculative_vs_plain": speculative,
        "next_scale_vs_raster": {
            "model": {
                **IMAGE_BACKBONE,
                "classes": CLASSES,
                "codes": IMAGE_CODES,
                "loom_parameters": sum(p.numel() for p in loom.parameters()),
                "next_scale_parameters": sum(p.numel() for p in next_scale.parameters()),
            },
            "tokenizers": {
                "next_scale": {"key": "image/multiscale", **IMAGE_TOKENIZER, "scales": multiscale.scales},
                "raster": {"key": "image/vq", **IMAGE_TOKENIZER, "quantizer": "vq"},
                "codebook_size": IMAGE_CODES,
                "code_dim": CODE_DIM,
            },
            "sampler": f"top-k {TOP_K}, no guidance",
            "results": images,
        },
        "targets": {
            "speedup_batch_1": 2.0,
            "speedup_batch_16": 1.3,
            "next_scale_ar_speedup_batch_1": 8.0,
            "next_scale_ar_speedup_batch_8": 3.0,
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{params / 1e6:.1f}M parameters, {args.threads} threads, {args.new_tokens} new tokens (noisy machine)")
    print("| batch | ours tok/s | HF tok/s | speedup (wall) | speedup (CPU time) | ours on the HF backend tok/s | "
          "same ids |")
    print("|---|---|---|---|---|---|---|")
    for r in next_token:
        print(f"| {r['batch']} | {r['ours_tokens_per_s']} | {r['hf_tokens_per_s']} | {r['speedup']}x | "
              f"{r['speedup_cpu_time']}x | {r['ours_hf_backend_tokens_per_s']} | {r['same_ids_as_hf']} |")
    print("| batch | plain passes | speculative passes | accepted/pass | plain s | speculative s | same |")
    print("|---|---|---|---|---|---|---|")
    for r in speculative:
        print(f"| {r['batch']} | {r['plain_forward_passes']} | {r['speculative_forward_passes']} | "
              f"{r['accepted_per_pass']} | {r['plain_s']} | {r['speculative_s']} | {r['same_output']} |")

    print("| batch | passes raster / next-scale | AR s/image raster / next-scale | AR speedup | "
          "detokenizer s/image raster / next-scale | total speedup |")
    print("|---|---|---|---|---|---|")
    for r in images:
        print(f"| {r['batch']} | {r['raster_forward_passes']} / {r['next_scale_forward_passes']} | "
              f"{r['raster_ar_s_per_image']} / {r['next_scale_ar_s_per_image']} | {r['ar_speedup']}x | "
              f"{r['raster_detokenizer_s_per_image']} / {r['next_scale_detokenizer_s_per_image']} | "
              f"{r['total_speedup']}x |")

if __name__ == "__main__":
    main()

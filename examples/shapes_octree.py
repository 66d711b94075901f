"""Procedural shapes (trimesh sphere, box, torus) -> octree tokens -> back, and a class-conditional model of them.

    python examples/shapes_octree.py [--depth 3] [--variants 24] [--steps 250] [--samples 8] [--out runs/shapes_octree]

Round trip: one sphere, box and torus are voxelised (surface voxels, 2**depth per side), tokenized as octree
streams and decoded. Per shape it prints the token count and whether decoding gives back exactly the voxels it
started from, and writes <shape>.obj (marching cubes over the decoded voxels) and shapes.png.

Generation: `variants` random shapes per class (radius; box extents; ring and tube radii; a tilt of up to 25
degrees about a random axis; a random size and place inside the unit cube) become records of one layout,

    <bos> <begin:label> c <end:label> <begin:3d> o_0 ... o_n <end:3d> <eos>      (n varies with the shape)

and a tiny LoomModel learns them (AdamW, next-token loss). Prompted with a class and <begin:3d>, it samples
occupancy bytes until its head emits <end:3d>; nothing constrains the bytes to form an octree. Figures: the
share of generated streams that decode to a valid octree (overall and per class); the share of valid ones whose
nearest training shape has the requested class (voxel IoU once both bounding boxes are fitted to one cube), next
to that judge's accuracy on fresh shapes; the share of valid ones that copy a training stream exactly. Valid
shapes are written as generated/<class>_<k>.obj and drawn in generated.png (a blank panel: an invalid stream).

What a CPU minute buys: at depth 3 (8^3 voxels, streams of 20-70 tokens) the model learns its training streams
by heart, and nearly all its valid samples are exact copies of them. A valid octree needs each level to hold
exactly as many bytes as the level above has set bits; with more shapes than it can memorise (64 or 128 per
class, same steps) the model misses that count and the valid share falls (0.38, 0.04 of 48 samples). Depth 4
streams (90-340 tokens) cost five times as much per step: the default run takes minutes, and 0.17 is valid.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from tokenloom.generators import (
    LoomModel,
    ModalityVocab,
    PackedSequence,
    Sampler,
    Temperature,
    VocabularyLayout,
    generate,
)
from tokenloom.generators.training import train_in_memory
from tokenloom.tokenizers.octree import OctreeTokenizer, voxelize_mesh, voxels_to_mesh, write_mesh

CLASSES = ("sphere", "box", "torus")
MAX_TILT_DEGREES = 25.0
MARGIN = 0.03  # free space kept around a shape inside the unit cube
PREVIEW_COLUMNS = 6  # generated shapes drawn per class
BACKBONE = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4,
}


# -- round trip ---------------------------------------------------------------------------------------------
def shapes() -> dict[str, object]:
    import trimesh

    return {
        "sphere": trimesh.creation.icosphere(subdivisions=3, radius=1.0),
        "box": trimesh.creation.box(extents=(1.0, 0.6, 0.8)),
        "torus": trimesh.creation.torus(major_radius=1.0, minor_radius=0.35),
    }


def round_trip(tokenizer: OctreeTokenizer, out: Path) -> tuple[dict[str, dict[str, object]], dict[str, np.ndarray]]:
    """Each primitive -> voxels -> tokens -> voxels -> <name>.obj; per shape its figures, and the decoded grids."""
    results, decoded_grids = {}, {}
    for name, mesh in shapes().items():
        voxels = voxelize_mesh(mesh, tokenizer.depth)
        ids = tokenizer.tokenize(voxels)
        decoded = tokenizer.decode_tokens(ids).numpy().astype(bool)
        write_mesh(voxels_to_mesh(decoded), out / f"{name}.obj")
        decoded_grids[name] = decoded
        results[name] = {"tokens": len(ids), "voxels": int(voxels.sum()),
                         "lossless": bool(np.array_equal(decoded, voxels)), "valid": tokenizer.is_valid(ids)}
        print(f"{name:>6}: {results[name]['voxels']:5d} voxels -> {results[name]['tokens']:4d} tokens, "
              f"lossless={results[name]['lossless']}, wrote {out / (name + '.obj')}")
    return results, decoded_grids


# -- procedural training shapes -----------------------------------------------------------------------------
def random_shape(name: str, rng: np.random.Generator) -> Any:
    """A random sphere, box or torus, tilted, scaled and moved to a random place inside the unit cube."""
    import trimesh

    if name == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=rng.uniform(0.25, 0.45))
    elif name == "box":
        mesh = trimesh.creation.box(extents=rng.uniform(0.35, 0.85, size=3))
    else:
        mesh = trimesh.creation.torus(major_radius=rng.uniform(0.24, 0.32), minor_radius=rng.uniform(0.07, 0.13),
                                      major_sections=32, minor_sections=12)  # fmt: skip
    axis = rng.normal(size=3)
    angle = math.radians(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis / np.linalg.norm(axis)))
    room = 1.0 - 2 * MARGIN - 1e-6
    size = float((mesh.bounds[1] - mesh.bounds[0]).max())
    if size > room:
        mesh.apply_scale(room / size)
    low, high = mesh.bounds
    mesh.apply_translation(rng.uniform(MARGIN - low, 1.0 - MARGIN - high))
    return mesh


def surface_voxels(mesh: Any, depth: int) -> np.ndarray:
    """(R, R, R) bool surface voxels of a mesh that lies in the unit cube, kept where it is.

    `voxelize_mesh` first fits each mesh to the cube, which would undo the random size and place.
    """
    import trimesh

    resolution = 2**depth
    fine_V3, _ = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=0.5 / resolution,
                                                  max_iter=depth + 6)  # fmt: skip
    index_N3 = np.clip(np.floor(fine_V3 * resolution).astype(np.int64), 0, resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[index_N3[:, 0], index_N3[:, 1], index_N3[:, 2]] = True
    return grid


class ShapeSet(NamedTuple):  # not a dataclass: those need their module in sys.modules, and the tests load a file
    """Procedural shapes of known classes: classes_N, their surface voxels and their octree streams."""

    classes_N: np.ndarray
    grids_NRRR: np.ndarray
    streams: list[np.ndarray]

    @classmethod
    def random(cls, per_class: int, tokenizer: OctreeTokenizer, seed: int) -> ShapeSet:
        rng = np.random.default_rng(seed)
        classes_N = np.repeat(np.arange(len(CLASSES)), per_class)
        grids_NRRR = np.stack([surface_voxels(random_shape(CLASSES[c], rng), tokenizer.depth) for c in classes_N])
        return cls(classes_N, grids_NRRR, [ids.numpy() for ids in tokenizer.tokenize(grids_NRRR)])


def fit_to_box(grids_NRRR: np.ndarray, size: int = 8) -> np.ndarray:
    """(N, size, size, size): each grid's occupied bounding box resampled (nearest voxel) to one small cube.

    It takes place and size out of a comparison, which then sees only the form.
    """
    out = np.zeros((len(grids_NRRR), size, size, size), dtype=bool)
    for n, grid in enumerate(grids_NRRR):
        occupied_P3 = np.argwhere(grid)
        if len(occupied_P3) == 0:
            continue
        low_3, high_3 = occupied_P3.min(axis=0), occupied_P3.max(axis=0) + 1
        picks = [np.floor(low_3[a] + (np.arange(size) + 0.5) * (high_3[a] - low_3[a]) / size).astype(np.int64)
                 for a in range(3)]  # fmt: skip
        out[n] = grid[np.ix_(*picks)]
    return out


def nearest_class(grids_NRRR: np.ndarray, reference_MRRR: np.ndarray, classes_M: np.ndarray) -> np.ndarray:
    """(N,) the class of each grid's nearest reference grid: voxel IoU of the forms (see `fit_to_box`)."""
    query_NX = fit_to_box(grids_NRRR).reshape(len(grids_NRRR), -1).astype(np.float32)
    reference_MX = fit_to_box(reference_MRRR).reshape(len(reference_MRRR), -1).astype(np.float32)
    intersection_NM = query_NX @ reference_MX.T
    union_NM = query_NX.sum(1, keepdims=True) + reference_MX.sum(1) - intersection_NM
    return classes_M[(intersection_NM / np.maximum(union_NM, 1.0)).argmax(axis=1)]


# -- the model ----------------------------------------------------------------------------------------------
def shape_layout(tokenizer: OctreeTokenizer) -> VocabularyLayout:
    # the label is one code; a 3d segment ends where its head emits <end:3d>
    return VocabularyLayout([ModalityVocab("label", len(CLASSES), tokens_per_segment=1),
                             ModalityVocab.from_tokenizer(tokenizer)])  # fmt: skip


def train_model(
    layout: VocabularyLayout, records: list[PackedSequence], args: argparse.Namespace
) -> tuple[LoomModel, list[float]]:
    """AdamW on next-token loss over random batches of the packed records; linear warmup, then cosine decay."""
    torch.manual_seed(args.seed)
    longest = max(len(r.ids_L) for r in records)
    model = LoomModel(layout, {**BACKBONE, "max_position_embeddings": 2 * longest})
    rng = np.random.default_rng(args.seed)
    losses = train_in_memory(model, lambda step: [records[i] for i in rng.integers(len(records), size=args.batch_size)],
                             args.steps, learning_rate=args.learning_rate, warmup_steps=max(args.steps // 10, 1),
                             min_lr_ratio=0.0)  # fmt: skip
    return model.eval(), losses


def generate_streams(model: LoomModel, tokenizer: OctreeTokenizer, classes_N: np.ndarray, temperature: float,
                     seed: int) -> list[np.ndarray | None]:  # fmt: skip
    """One octree stream per requested class (None where the stream never reached its end token)."""
    layout = model.layout
    begin_3d = layout.begin_id("3d")
    prompts = [np.append(layout.pack([("label", [c])], add_eos=False).ids_L, begin_3d) for c in classes_N]
    longest = sum(8**level for level in range(tokenizer.depth))  # every node of levels 0..depth-1 non-empty
    sampler = Sampler([Temperature(temperature)], seed=seed)
    out = generate(model, prompts, max_new_tokens=longest + 1, sampler=sampler)
    streams = []
    for segments in out.segments():
        shape = next(s for s in segments if s.modality == "3d")
        streams.append(None if shape.truncated else shape.ids)
    return streams


# -- figures and files --------------------------------------------------------------------------------------
def share(hits_N: np.ndarray, among_N: np.ndarray) -> float:
    """The share of `among_N` rows that are hits (0 when there are none)."""
    return round(float(hits_N[among_N].mean()), 4) if among_N.any() else 0.0


def generation_figures(
    streams: list[np.ndarray | None], classes_N: np.ndarray, tokenizer: OctreeTokenizer, training: ShapeSet
) -> tuple[dict[str, object], list[np.ndarray | None]]:
    """Valid, recognised and copied shares (overall and per class); the decoded grid of each valid stream."""
    valid_N = np.array([s is not None and tokenizer.is_valid(s) for s in streams])
    grids = [tokenizer.decode_tokens(s).numpy() if ok else None for s, ok in zip(streams, valid_N)]
    recognised_N = np.zeros(len(streams), dtype=bool)
    if valid_N.any():
        judged = nearest_class(np.stack([g for g in grids if g is not None]), training.grids_NRRR, training.classes_N)
        recognised_N[valid_N] = judged == classes_N[valid_N]
    seen = {tuple(ids.tolist()) for ids in training.streams}
    copied_N = np.array([ok and tuple(s.tolist()) in seen for s, ok in zip(streams, valid_N)])
    everything_N = np.ones(len(streams), dtype=bool)
    return {
        "samples": len(streams),
        "valid_share": share(valid_N, everything_N),
        "valid_share_per_class": {name: share(valid_N, classes_N == c) for c, name in enumerate(CLASSES)},
        "recognised_share": share(recognised_N, valid_N),
        "recognised_share_per_class": {
            name: share(recognised_N, valid_N & (classes_N == c)) for c, name in enumerate(CLASSES)
        },
        "copied_share": share(copied_N, valid_N),
    }, grids


def write_generated(grids: list[np.ndarray | None], classes_N: np.ndarray, folder: Path) -> int:
    """<class>_<k>.obj (k counts within the class) for each valid, non-empty grid; how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for n, (grid, c) in enumerate(zip(grids, classes_N)):
        if grid is not None and grid.any():
            write_mesh(voxels_to_mesh(grid), folder / f"{CLASSES[c]}_{int((classes_N[:n] == c).sum())}.obj")
            written += 1
    return written


def preview(rows: list[list[tuple[str, np.ndarray | None]]], path: Path) -> None:
    """One row of 3D panels per list of (title, grid): each grid's marching-cubes surface in the unit cube, seen
    from above so that a torus shows its hole; None or an empty grid leaves the panel blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in rows)
    fig = plt.figure(figsize=(2.2 * columns, 2.2 * len(rows)))
    for r, panels in enumerate(rows):
        for c, (title, grid) in enumerate(panels):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1, projection="3d")
            if grid is not None and grid.any():  # ax.voxels looks the same but draws ten times slower
                mesh = voxels_to_mesh(grid)
                ax.plot_trisurf(*mesh.vertices.T, triangles=mesh.faces, color="steelblue", linewidth=0)
            ax.set(xlim=(0, 1), ylim=(0, 1), zlim=(0, 1))
            ax.view_init(elev=60, azim=-60)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def generated_panels(grids: list[np.ndarray | None], classes_N: np.ndarray) -> list[list[tuple[str, Any]]]:
    """A row per class of its first `PREVIEW_COLUMNS` generated grids, titled; an invalid stream's panel is blank."""
    rows = []
    for c, name in enumerate(CLASSES):
        rows.append([(f"{name} {k}" + ("" if grids[n] is not None else ": invalid"), grids[n])
                     for k, n in enumerate(np.flatnonzero(classes_N == c)[:PREVIEW_COLUMNS])])  # fmt: skip
    return rows


def try_preview(rows: list[list[tuple[str, np.ndarray | None]]], path: Path) -> None:
    try:
        preview(rows, path)
    except ImportError:
        print(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")


# -- the script ---------------------------------------------------------------------------------------------
def generation(tokenizer: OctreeTokenizer, args: argparse.Namespace, out: Path) -> dict[str, object]:
    """Training shapes -> model -> `samples` streams per class -> figures, OBJ files and generated.png."""
    start = time.perf_counter()
    training = ShapeSet.random(args.variants, tokenizer, args.seed)
    layout = shape_layout(tokenizer)
    records = [layout.pack([("label", [c]), ("3d", ids)]) for c, ids in zip(training.classes_N, training.streams)]
    fresh = ShapeSet.random(args.judge_shapes, tokenizer, args.seed + 1)
    judged_N = nearest_class(fresh.grids_NRRR, training.grids_NRRR, training.classes_N)
    data_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model, losses = train_model(layout, records, args)
    training_seconds = time.perf_counter() - start

    start = time.perf_counter()
    classes_N = np.repeat(np.arange(len(CLASSES)), args.samples)
    streams = generate_streams(model, tokenizer, classes_N, args.temperature, args.seed)
    figures, grids = generation_figures(streams, classes_N, tokenizer, training)
    figures["obj_files"] = write_generated(grids, classes_N, out / "generated")
    generation_seconds = time.perf_counter() - start
    try_preview(generated_panels(grids, classes_N), out / "generated.png")
    return {
        "training_shapes": len(records),
        "mean_tokens_per_training_shape": round(float(np.mean([len(ids) for ids in training.streams])), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "final_loss": round(float(np.mean(losses[-10:])), 4),
        **figures,
        "judge_accuracy_on_fresh_shapes": round(float((judged_N == fresh.classes_N).mean()), 4),
        "data_seconds": round(data_seconds, 2),
        "training_seconds": round(training_seconds, 2),
        "generation_seconds": round(generation_seconds, 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3, help="octree depth: 2**depth voxels per side")
    parser.add_argument("--variants", type=int, default=24, help="random training shapes per class")
    parser.add_argument("--steps", type=int, default=250, help="training steps of the model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--samples", type=int, default=8, help="generated shapes per class")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--judge-shapes", type=int, default=10, help="fresh shapes per class to check the judge on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/shapes_octree")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = OctreeTokenizer(depth=args.depth)
    results: dict[str, object] = {"depth": args.depth}
    results["round_trip"], decoded_grids = round_trip(tokenizer, out)
    try_preview([[(name, grid) for name, grid in decoded_grids.items()]], out / "shapes.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: OpenMP's thread sync would cost more than the matmuls it splits
    try:
        results["generation"] = figures = generation(tokenizer, args, out)
    finally:
        torch.set_num_threads(threads)
    per_class = ", ".join(f"{name} {value:.2f}" for name, value in figures["valid_share_per_class"].items())
    print(f"model ({figures['parameters']} parameters) trained {args.steps} steps on {figures['training_shapes']} "
          f"shapes in {figures['training_seconds']:.1f} s, loss {figures['final_loss']}; {figures['samples']} "
          f"generated streams: valid octrees {figures['valid_share']:.2f} ({per_class}); of the valid ones, "
          f"recognised as the requested class {figures['recognised_share']:.2f} (the judge gets "
          f"{figures['judge_accuracy_on_fresh_shapes']:.2f} of fresh shapes right), exact copies of a training "
          f"shape {figures['copied_share']:.2f}; wrote {figures['obj_files']} OBJ files to {out / 'generated'}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

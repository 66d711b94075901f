"""The Ray side of `GenerationPipeline`: three long-lived actors chained in a compiled graph.

    pack (condition -> prompts) -> model (prompts -> ids) -> decode (ids -> images)

Each actor loads its part of the generator folder once and keeps it (the model actor its weights, the decode
actor its tokenizers). ``resources`` gives each step its Ray resources, e.g. ``{"model": {"num_cpus": 1,
"num_gpus": 0.5}, "decode": {"num_cpus": 0.5}}``; a step with GPUs runs on "cuda". The actors are chained with
Ray's compiled graphs (``experimental_compile``): a batch moves between them through shared-memory channels
(about 0.05 ms a hop here, against about 0.8 ms for an ordinary actor call).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenloom.generators.bundle import GeneratedIds, GenerationRequest

DEFAULT_RESOURCES = {"pack": {"num_cpus": 0}, "model": {"num_cpus": 1}, "decode": {"num_cpus": 0.5}}


class _Step:
    """One actor's part: ``run`` takes the previous step's output."""

    def __init__(self, path: str, step: str, num_cpus: float, num_gpus: float) -> None:
        import torch

        from tokenloom.generators.bundle import GeneratorBundle

        torch.set_num_threads(max(1, int(num_cpus)))  # a fractional-CPU actor gets one thread
        self.step = step
        self.bundle = GeneratorBundle.load(path, device="cuda" if num_gpus > 0 else "cpu")

    def ready(self) -> dict[str, Any]:
        """Where this step runs: its device and the GPUs Ray gave it (models load on the first batch)."""
        import ray

        return {"step": self.step, "device": str(self.bundle.device), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, value: Any) -> Any:
        if self.step == "pack":
            labels, request = value
            return self.bundle.pack(labels, request.strategy), request
        if self.step == "model":
            prompts, request = value
            return self.bundle.generate(prompts, request)
        return value, self.bundle.decode(value)


class RayGeneration:
    """Callable like `generation.run_steps`: (labels, request) -> (GeneratedIds, images)."""

    def __init__(self, path: str, resources: dict[str, dict[str, float]] | None = None, address: str | None = None) -> None:
        import ray
        from ray.dag import InputNode

        from tokenloom.pipelines.ray_executor import ensure_ray

        self._started = ensure_ray(address)
        steps = {k: {**v, **(resources or {}).get(k, {})} for k, v in DEFAULT_RESOURCES.items()}
        unknown = set(resources or {}) - set(steps)
        if unknown:
            raise ValueError(f"resources for unknown steps {sorted(unknown)}; the steps are {list(steps)}")
        actor = ray.remote(_Step)
        self.actors = {}
        for step, options in steps.items():
            cpus, gpus = float(options.get("num_cpus", 0)), float(options.get("num_gpus", 0))
            self.actors[step] = actor.options(**options, name=None).remote(path, step, cpus, gpus)
        self.placement = dict(zip(self.actors, ray.get([a.ready.remote() for a in self.actors.values()])))
        with InputNode() as request:
            packed = self.actors["pack"].run.bind(request)
            generated = self.actors["model"].run.bind(packed)
            output = self.actors["decode"].run.bind(generated)
        self.graph = output.experimental_compile()

    def __call__(self, labels: list[int], request: GenerationRequest) -> tuple[GeneratedIds, np.ndarray]:
        import ray

        return ray.get(self.graph.execute((labels, request)))

    def close(self) -> None:
        import ray

        self.graph.teardown()
        for a in self.actors.values():
            ray.kill(a)
        if self._started:
            ray.shutdown()


__all__ = ["DEFAULT_RESOURCES", "RayGeneration"]

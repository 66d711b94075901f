"""Online generation: per-request latency (p50/p95) and throughput at 1, 4 and 16 concurrent callers, with
``tl.load_pipeline`` in-process and on Ray (three long-lived actors in a compiled graph), plus the cost of one
hop between actors: a compiled graph against ordinary actor calls.

    python bench/online.py [--generator runs/demo] [--requests 24]   # -> bench/results/online.json

The generator folder is the one ``tokenloom demo`` writes (run it first). Each caller sends ``--requests``
requests of one image each (a random class, next-token decoding with CFG 2.0) one after the other; callers
are threads of this process. Latency: from the call to its images; throughput: images per second over the
run. The batcher gathers the requests that wait at the same time into one batch (``max_wait_ms`` 5).
The hop cost: a no-op payload through three chained actors, per call, divided by the three hops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from typing import Any

# Run as a script, this file's folder leads sys.path and bench/tokenizers.py would hide the HF `tokenizers` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import tokenloom as tl  # noqa: E402


def run_callers(gen: Any, callers: int, requests: int, strategy: str, seed: int = 0) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        for _ in range(requests):
            started = time.perf_counter()
            gen.generate(label=int(rng.integers(10)), strategy=strategy, cfg=2.0)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"callers": callers, "requests": len(latencies), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "images_per_second": round(len(latencies) / seconds, 1)}


def hop_cost(calls: int = 300) -> dict[str, float]:
    """ms per hop: three chained no-op actors, compiled graph vs ordinary calls."""
    import ray
    from ray.dag import InputNode

    @ray.remote(num_cpus=0)
    class Hop:
        def f(self, x: Any) -> Any:
            return x

    actors = [Hop.remote() for _ in range(3)]
    payload = np.zeros(16, dtype=np.int64)
    with InputNode() as value:
        node = value
        for a in actors:
            node = a.f.bind(node)
    graph = node.experimental_compile()
    for _ in range(20):
        ray.get(graph.execute(payload))
    started = time.perf_counter()
    for _ in range(calls):
        ray.get(graph.execute(payload))
    compiled = (time.perf_counter() - started) / calls / 3 * 1000
    graph.teardown()
    started = time.perf_counter()
    for _ in range(calls):
        ref = payload
        for a in actors:
            ref = a.f.remote(ref)
        ray.get(ref)
    plain = (time.perf_counter() - started) / calls / 3 * 1000
    for a in actors:
        ray.kill(a)
    return {"compiled_graph_ms_per_hop": round(compiled, 3), "actor_call_ms_per_hop": round(plain, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="runs/demo")
    parser.add_argument("--requests", type=int, default=24, help="requests per caller")
    parser.add_argument("--strategy", default="next_token")
    parser.add_argument("--callers", default="1,4,16")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "online.json"))
    args = parser.parse_args(argv)
    import torch

    from tokenloom.pipelines.ray_executor import ensure_ray

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {"benchmark": "online", "strategy": args.strategy, "requests_per_caller": args.requests,
                               "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                               "results": {}}  # fmt: skip
    started_ray = ensure_ray()
    import ray

    results["ray"] = ray.__version__
    try:
        for executor in ("local", "ray"):
            with tl.load_pipeline(args.generator, executor=executor) as gen:
                gen.generate(label=[0, 1], strategy=args.strategy, cfg=2.0)  # load and warm up
                rows = [run_callers(gen, int(c), args.requests, args.strategy) for c in args.callers.split(",")]
            results["results"][executor] = rows
            for r in rows:
                print(f"{executor:5s} callers {r['callers']:2d}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
                      f"{r['images_per_second']} images/s")
        results["hop"] = hop_cost()
        print(results["hop"])
    finally:
        if started_ray:
            ray.shutdown()
    results["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

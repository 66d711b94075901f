"""load_pipeline on Ray: three long-lived actors in a compiled graph give what the in-process pipeline gives."""

import threading

import numpy as np

import tokenloom as tl
from tests.helpers import tiny_generator


def test_ray_generation_equals_in_process_and_batches_callers(tmp_path):
    folder = tiny_generator(tmp_path / "generator")
    with tl.load_pipeline(folder) as local:
        expected = {s: local.generate(label=[1, 8], strategy=s, cfg=2.0) for s in ("next_token", "next_scale")}
    resources = {"model": {"num_cpus": 1}, "decode": {"num_cpus": 0.5}}
    with tl.load_pipeline(folder, executor="ray", resources=resources, max_wait_ms=200) as gen:
        for strategy, want in expected.items():
            got = gen.generate(label=[1, 8], strategy=strategy, cfg=2.0)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.images, want.images)
            assert got.forward_passes == want.forward_passes
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.update({i: gen.generate(label=i)})) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [0, 1, 2, 3] and max(r.batch_size for r in results.values()) > 1
        actors = list(gen._ray.actors.values())
    import time

    import ray

    def alive(actor):
        try:
            ray.get(actor.ready.remote(), timeout=30)
            return True
        except Exception:  # noqa: BLE001 - any error means the actor no longer answers
            return False

    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while any(alive(a) for a in actors) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(a) for a in actors)  # closed: the actors are gone


def test_a_model_step_with_a_fraction_of_a_gpu_gets_one_and_targets_cuda(tmp_path):
    """On the session's Ray (2 pretend GPUs): placement only, the models load on the first batch."""
    from tokenloom.pipelines.generation_ray import RayGeneration

    folder = tiny_generator(tmp_path / "generator")
    generation = RayGeneration(folder, resources={"model": {"num_cpus": 0, "num_gpus": 0.5}, "decode": {"num_cpus": 0}})
    try:
        placement = generation.placement
        assert placement["model"]["device"] == "cuda" and len(placement["model"]["gpus"]) == 1
        assert placement["pack"]["device"] == placement["decode"]["device"] == "cpu"
        assert placement["pack"]["gpus"] == placement["decode"]["gpus"] == []
    finally:
        generation.close()

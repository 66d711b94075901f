import numpy as np
import pytest

import tokenloom as tl
from tests.helpers import GpuProbe, RejectBad, captions_pipeline, write_captions
from tests.unit.pipelines.test_config import YAML
from tests.unit.pipelines.test_kill_resume import run_killed_then_resumed
from tokenloom.nodes.base import Resources
from tokenloom.pipelines.cli import main
from tokenloom.pipelines.graph import ClusterSpec


def _table(path, errors=False):
    return tl.read_output(path, errors=errors).sort_by("row_id")


def _pipeline_with_errors(src, out):
    p = captions_pipeline(src, out)
    # Insert a rejecting node on one branch: the fan-in must still see every row exactly once.
    q = tl.Pipeline("with-errors")
    rows = q.source(tl.nodes.ReadParquet(path=src))
    checked = q.add(RejectBad(), rows)
    for name in ("count_chars", "upper"):
        q.add(p.node(name), checked, name=name)
    q.add(p.node("summarise"), "count_chars", "upper", name="summarise")
    q.sink(tl.nodes.WriteParquet(path=out, batch_size=8), "summarise")
    return q


def test_local_and_ray_give_the_same_rows(tmp_path):
    write_captions(str(tmp_path / "in"), files=4, rows=25, row_group_size=5, bad_every=9)
    src = str(tmp_path / "in")
    local = _pipeline_with_errors(src, str(tmp_path / "local")).run(executor="local", progress=False)
    remote = _pipeline_with_errors(src, str(tmp_path / "ray")).run(executor="ray", progress=False)
    assert local.reconciles and remote.reconciles
    assert (local.rows_in, local.rows_written, local.rows_errors) == (remote.rows_in, remote.rows_written, remote.rows_errors) == (100, 88, 12)
    a, b = _table(str(tmp_path / "local")), _table(str(tmp_path / "ray"))
    assert a.column_names == b.column_names
    assert a.equals(b)
    assert _table(str(tmp_path / "local"), errors=True).equals(_table(str(tmp_path / "ray"), errors=True))
    assert remote.nodes["reject_bad"].errors == 12 and remote.nodes["count_chars"].rows == 88


def test_yaml_on_ray_through_the_cli(tmp_path, capsys):
    write_captions(str(tmp_path / "in"))
    config = tmp_path / "p.yaml"
    config.write_text(YAML.format(src=tmp_path / "in", out=tmp_path / "out"))
    assert main(["run", str(config), "--executor", "ray", "--allow-module", "tests.helpers", "--no-progress"]) == 0
    assert "rows in 30 = written 30 + errors 0 [ok]" in capsys.readouterr().out
    assert len(_table(str(tmp_path / "out"))) == 30


def test_memory_filesystem_on_ray(tmp_path):
    write_captions("memory://tl-ray/in")
    p = captions_pipeline("memory://tl-ray/in", "memory://tl-ray/out")
    report = p.run(executor="ray", progress=False)
    assert report.rows_written == 30 and len(_table("memory://tl-ray/out")) == 30


def test_fractional_gpu_actors_are_packed_two_per_gpu(tmp_path):
    write_captions(str(tmp_path / "in"), files=4, rows=32, row_group_size=4)
    p = tl.Pipeline("gpus")
    rows = p.source(tl.nodes.ReadParquet(path=str(tmp_path / "in")))
    probe = p.add(GpuProbe(resources=Resources(cpus=0.25, gpus=0.5), batch_size=4, concurrency=4), rows)
    p.sink(tl.nodes.WriteParquet(path=str(tmp_path / "out")), probe)
    assert "gpus=0.5" in p.describe(ClusterSpec.from_ray())
    p.run(executor="ray", progress=False)
    table = _table(str(tmp_path / "out"))
    pids_by_gpu: dict[str, set[int]] = {}
    for gpu, pid in zip(table.column("gpu_ids").to_pylist(), table.column("worker_pid").to_pylist()):
        ray_ids, cuda = gpu.split(";")
        assert ray_ids in {"0", "1"} and cuda == ray_ids  # one GPU per actor, and CUDA sees only it
        pids_by_gpu.setdefault(ray_ids, set()).add(pid)
    assert all(len(pids) <= 2 for pids in pids_by_gpu.values())  # two half-GPU actors per GPU at most
    assert len(set().union(*pids_by_gpu.values())) >= 2


def test_build_checks_against_the_ray_cluster(tmp_path):
    write_captions(str(tmp_path / "in"))
    p = tl.Pipeline("too-big")
    rows = p.source(tl.nodes.ReadParquet(path=str(tmp_path / "in")))
    p.sink(tl.nodes.WriteParquet(path=str(tmp_path / "out")),
           p.add(GpuProbe(resources=Resources(gpus=1), batch_size=4, concurrency=3), rows))
    with pytest.raises(tl.PipelineError, match="actor pools need at least 3 gpus"):
        p.run(executor="ray", progress=False)


def test_ray_job_killed_then_resumed(tmp_path):
    run_killed_then_resumed(tmp_path, "ray")


def test_rows_are_numpy_batches_in_workers(tmp_path):
    write_captions(str(tmp_path / "in"))

    @tl.node(reads=["feature"], writes=["feature_shape"])
    def shape_of(batch):
        assert isinstance(batch["feature"], np.ndarray) and batch["feature"].ndim == 3
        return {"feature_shape": np.array([str(f.shape) for f in batch["feature"]], dtype=object)}

    p = tl.Pipeline("shapes")
    p.sink(tl.nodes.WriteParquet(path=str(tmp_path / "out")), p.add(shape_of(), p.source(tl.nodes.ReadParquet(path=str(tmp_path / "in")))))
    assert p.run(executor="ray", progress=False).rows_errors == 0
    assert set(_table(str(tmp_path / "out")).column("feature_shape").to_pylist()) == {"(2, 3)"}

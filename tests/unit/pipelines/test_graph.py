"""build() checks: each problem names the node and the field to change."""

from dataclasses import dataclass

import numpy as np
import pytest

import tokenloom as tl
from tests.helpers import CountChars, captions_pipeline, upper, write_captions
from tokenloom.nodes.base import Node, Resources
from tokenloom.pipelines.graph import ClusterSpec


@pytest.fixture()
def src(tmp_path):
    write_captions(str(tmp_path / "in"))
    return str(tmp_path / "in")


def _pipeline(src, out, *nodes):
    p = tl.Pipeline("t")
    prev = p.source(tl.nodes.ReadParquet(path=src))
    for n in nodes:
        prev = p.add(n, prev)
    p.sink(tl.nodes.WriteParquet(path=out), prev)
    return p


def test_valid_pipeline_describes_resources(src, tmp_path):
    p = captions_pipeline(src, str(tmp_path / "out"))
    text = p.describe(ClusterSpec.local(cpus=2, gpus=0))
    assert "count_chars" in text and "[actors]" in text and "cpus=1" in text
    assert "summarise" in text and "<- count_chars, upper" in text


def test_cycle_is_reported(src, tmp_path):
    p = tl.Pipeline("cyclic")
    p.source(tl.nodes.ReadParquet(path=src), name="rows")
    p.add(upper(), "b", name="a")
    p.add(CountChars(column="upper"), "a", name="b")
    with pytest.raises(tl.PipelineError, match=r"nodes \['a', 'b'\] form a cycle"):
        p.build(ClusterSpec.local(cpus=2, gpus=0))


def test_column_nothing_writes(src, tmp_path):
    p = _pipeline(src, str(tmp_path / "o"), CountChars(column="title"))
    with pytest.raises(tl.PipelineError) as info:
        p.build(ClusterSpec.local(cpus=2, gpus=0))
    assert "node 'count_chars' reads column 'title', which nothing upstream writes" in str(info.value)


def test_two_nodes_writing_one_column(src, tmp_path):
    p = tl.Pipeline("dup")
    rows = p.source(tl.nodes.ReadParquet(path=src))
    first = p.add(upper(), rows, name="first")
    p.add(upper(), rows, name="second")
    p.sink(tl.nodes.WriteParquet(path=str(tmp_path / "o")), first)
    with pytest.raises(tl.PipelineError, match="nodes 'first' and 'second' both write column 'upper'"):
        p.build(ClusterSpec.local(cpus=2, gpus=0))


def test_unsatisfiable_resources(src, tmp_path):
    p = _pipeline(src, str(tmp_path / "o"), CountChars(resources=Resources(cpus=1, gpus=3), batch_size=8))
    with pytest.raises(tl.PipelineError) as info:
        p.build(ClusterSpec(({"CPU": 8, "GPU": 2, "memory": 1e10},)))
    assert "node 'count_chars': field 'resources' asks for gpus=3 (largest node has 2)" in str(info.value)


def test_actor_pools_that_cannot_all_start(src, tmp_path):
    big = CountChars(resources=Resources(cpus=1), concurrency=(3, 4))
    p = _pipeline(src, str(tmp_path / "o"), big)
    with pytest.raises(tl.PipelineError) as info:
        p.build(ClusterSpec.local(cpus=2, gpus=0))
    text = str(info.value)
    assert "actor pools need at least 3 cpus" in text and "'count_chars' 3 x 1" in text and "concurrency" in text


def test_gpu_node_needs_batch_size(src, tmp_path):
    p = _pipeline(src, str(tmp_path / "o"), CountChars(resources=Resources(gpus=0.5)))
    with pytest.raises(tl.PipelineError, match="requests gpus=0.5 but batch_size is unset"):
        p.build(ClusterSpec(({"CPU": 4, "GPU": 1, "memory": 1e10},)))


def test_every_problem_is_listed_at_once(src, tmp_path):
    @dataclass
    class Needs(Node):
        WRITES = ("upper",)
        READS = ("missing",)

    p = _pipeline(src, str(tmp_path / "o"), upper(), Needs(resources=Resources(cpus=64)))
    with pytest.raises(tl.PipelineError) as info:
        p.build(ClusterSpec.local(cpus=2, gpus=0))
    assert len(info.value.problems) == 3  # duplicate column, unknown column, too many cpus


def test_unknown_input_and_missing_sink(src):
    p = tl.Pipeline("t")
    p.source(tl.nodes.ReadParquet(path=src), name="rows")
    p.add(upper(), "rowz", name="u")
    with pytest.raises(tl.PipelineError, match="field 'inputs' names 'rowz'"):
        p.build(ClusterSpec.local(cpus=2, gpus=0))
    q = tl.Pipeline("nosink")
    q.source(tl.nodes.ReadParquet(path=src))
    with pytest.raises(tl.PipelineError, match="no sink"):
        q.build(ClusterSpec.local(cpus=2, gpus=0))


def test_source_path_that_matches_nothing(tmp_path):
    p = tl.Pipeline("t")
    rows = p.source(tl.nodes.ReadParquet(path=str(tmp_path / "nothing/*.parquet")))
    p.sink(tl.nodes.WriteParquet(path=str(tmp_path / "o")), rows)
    with pytest.raises(FileNotFoundError, match="no input files"):
        p.build(ClusterSpec.local(cpus=2, gpus=0))


def test_runner_requires_one_to_one_rows():
    from tokenloom.pipelines.runner import NodeRunner

    @tl.node(writes=["x"])
    def grow(batch):
        return {"x": np.zeros(len(batch["row_id"]) + 1)}

    runner = NodeRunner(grow(), "grow")
    out = runner({"row_id": np.array(["a", "b"], dtype=object)})
    assert runner.stats.errors == 2
    assert list(out["_error_node"]) == ["grow", "grow"]
    assert "has 2 rows for a batch of 1; nodes map rows one to one" in out["_error"][0]

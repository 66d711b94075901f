"""examples/shapes_octree.py runs with small settings and its figures are in range."""

import pytest

from tests.examples.helpers import load_example


def test_shapes_octree(tmp_path):
    pytest.importorskip("trimesh")
    pytest.importorskip("skimage")
    results = load_example("shapes_octree").main(["--depth", "4", "--out", str(tmp_path)])
    assert set(results) == {"sphere", "box", "torus"}
    for name, r in results.items():
        assert r["lossless"] and r["valid"] and r["tokens"] > 0
        assert (tmp_path / f"{name}.obj").stat().st_size > 0

"""examples/timeseries_co2.py runs with small settings and its figures are in range."""

import json

import pytest

from tests.examples.helpers import load_example


def test_timeseries_co2(tmp_path):
    pytest.importorskip("statsmodels")
    results = load_example("timeseries_co2").main(["--out", str(tmp_path)])
    assert results["co2"]["missing"] > 0  # the gaps travel as PAD
    assert all(r["within_bound"] for r in results.values())
    assert json.loads((tmp_path / "results.json").read_text()) == results

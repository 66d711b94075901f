"""examples/actions_cartpole.py runs with small settings and its figures are in range."""

import pytest

from tests.examples.helpers import load_example


def test_actions_cartpole(tmp_path):
    pytest.importorskip("gymnasium")
    results = load_example("actions_cartpole").main(["--episodes", "3", "--chunk", "25", "--out", str(tmp_path)])
    assert results["mean_episode_length"] > 100  # the controller balances the pole
    assert results["bins_max_error_in_bins"] <= 0.5 + 1e-3
    assert results["fast_rms_within_bound"]
    assert results["fast_tokens_per_chunk"] < results["fast_numbers_per_chunk"]  # FAST compresses

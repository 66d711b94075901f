"""examples/actions_cartpole.py runs with small settings and its figures are in range."""

import json

import pytest

from tests.examples.helpers import load_example

# 3 controller episodes (1500 steps), 150 AdamW steps, 4 evaluation episodes: about 20 s on 2 cores.
SMALL = ["--episodes", "3", "--chunk", "25", "--train-steps", "150", "--eval-episodes", "4"]


def test_actions_cartpole(tmp_path):
    pytest.importorskip("gymnasium")
    results = load_example("actions_cartpole").main([*SMALL, "--out", str(tmp_path)])
    assert results["mean_episode_length"] > 100  # the controller balances the pole
    assert results["bins_max_error_in_bins"] <= 0.5 + 1e-3
    assert results["fast_rms_within_bound"]
    assert results["fast_tokens_per_chunk"] < results["fast_numbers_per_chunk"]  # FAST compresses
    # A random policy lasts about 20 steps. With these settings the policy lasted 338-500 steps on average over
    # training seeds 0-7 (and at least 149 with only 60 training steps); 150 leaves room for other machines.
    assert results["random_mean_episode_length"] < 50
    assert results["policy_mean_episode_length"] > 150
    assert results["policy_mean_episode_length"] > 5 * results["random_mean_episode_length"]
    assert results["policy_forward_passes_per_action"] == 1.0  # begin/end tokens are forced, not decoded
    assert json.loads((tmp_path / "results.json").read_text()) == results

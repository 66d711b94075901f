"""`tokenloom demo --fast` end to end on the session's Ray, then again: the second run resumes; its output
folder is a generator that `tl.load_pipeline` opens."""

import json

import numpy as np
import pytest

import tokenloom as tl
from tokenloom.pipelines.demo import run_demo
from tokenloom.pipelines.demo_generation import digit_judge


@pytest.mark.timeout(900)  # two demo runs: ~2 min on 2 idle cores
def test_demo_fast_then_resumed(tmp_path):
    out = tmp_path / "demo"
    assert run_demo(str(out), fast=True, executor="ray") == 0
    figures = json.loads((out / "report.json").read_text())
    job, tok = figures["tokenize"], figures["tokenizer"]
    assert figures["data"]["rows"] == 1797
    assert job["rows_in"] == job["rows_written"] == job["rows_in_output"] == 1797 and job["reconciles"]
    assert job["tokens_per_image"] == 16
    assert tok["psnr_db"] > 18 and tok["codebook_usage"] > 0.5  # 300 steps; the full demo reaches ~26 dB
    assert abs(job["psnr_db"] - tok["psnr_db"]) < 0.5  # the batch job's shards decode as the tokenizer does
    for name in ("report.md", "digits.png", "tokenizer_loss.png", "next_token_loss.png", "next_scale_loss.png"):
        assert (out / name).stat().st_size > 0
    # 250 training steps per model (the full demo: 800); measured on the fast settings: next-token + CFG ~0.97,
    # next-scale + CFG ~0.84. The bars sit well above chance (0.1) and below what the runs reach.
    strategies = figures["generation"]["strategies"]
    assert strategies["next-token + CFG"]["accuracy"] >= 0.8
    assert strategies["next-scale + CFG"]["accuracy"] >= 0.5
    assert strategies["next-token"]["forward_passes"] == 16 and strategies["next-scale + CFG"]["forward_passes"] == 4
    for g in strategies.values():
        assert g["images_per_second"] > 0 and (out / g["picture"]).stat().st_size > 0
    assert figures["training"]["next_token"]["final_loss"] < figures["training"]["next_token"]["first_loss"]

    assert run_demo(str(out), fast=True, executor="ray") == 0
    again = json.loads((out / "report.json").read_text())
    assert again["tokenizer"]["reused"] and again["tokenize"]["rows_skipped"] == 1797
    assert again["tokenize"]["rows_written"] == 0 and again["tokenize"]["rows_in_output"] == 1797
    assert all(t["reused"] for t in again["training"].values())

    with tl.load_pipeline(out) as gen:  # the demo's folder, called in-process
        result = gen.generate(label=[3, 7, 3, 7], strategy="next_token", cfg=2.0)
    assert result.images.shape == (4, 16, 16, 1)
    assert np.mean(digit_judge()(result.images) == [3, 7, 3, 7]) >= 0.5

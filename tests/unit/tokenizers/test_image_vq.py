"""The conv VQ image tokenizer ("image/vq"): the contract at each downsampling factor, its input layouts,
training, and the digits quality bar of issue 3."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from tests.unit.tokenizers.contract import check_contract
from tokenloom.registry import TOKENIZERS
from tokenloom.tokenizers import load_tokenizer
from tokenloom.tokenizers.image_vq import ImageVQTokenizer

TINY = {"channels": 8, "latent_channels": 8, "quantizer": "fsq", "quantizer_kwargs": {"levels": [4, 3, 3]}}


def _images(batch: int = 2, size: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), dtype=np.uint8)


def test_registered_as_image_vq():
    assert TOKENIZERS.get("image/vq") is ImageVQTokenizer


@pytest.mark.parametrize("downsample", [4, 8, 16])
def test_contract_at_each_downsampling_factor(downsample, tmp_path):
    torch.manual_seed(0)
    tokenizer = ImageVQTokenizer(downsample=downsample, **TINY)
    ids = check_contract(tokenizer, _images(size=32), tmp_path, expected_grid=(32 // downsample,) * 2)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
    assert tokenizer.token_grid((32, 32)) == (32 // downsample,) * 2


def test_contract_with_torch_uint8_input_returns_torch(tmp_path):
    torch.manual_seed(0)
    tokenizer = ImageVQTokenizer(downsample=4, **TINY)
    images = torch.from_numpy(_images())
    ids = check_contract(tokenizer, images, tmp_path, expected_grid=(4, 4))
    assert isinstance(ids, torch.Tensor)
    decoded = tokenizer.decode_tokens(ids)
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.uint8 and decoded.shape == images.shape


def test_float_bchw_input_gives_the_same_ids_as_uint8_bhwc():
    torch.manual_seed(0)
    tokenizer = ImageVQTokenizer(downsample=4, **TINY).eval()
    images = _images()
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(tokenizer.tokenize(as_float), torch.from_numpy(tokenizer.tokenize(images)))
        decoded = tokenizer.decode_tokens(tokenizer.tokenize(as_float), output="float")
    assert decoded.shape == as_float.shape and decoded.dtype == torch.float32


def test_ids_travel_as_an_int32_column():
    tokenizer = ImageVQTokenizer(downsample=4, **TINY).eval()
    with torch.no_grad():
        ids = tokenizer.tokenize(_images())
        column = tokenizer.ids_to_column(ids)
        assert column.shape == (2, 4, 4) and column.dtype == np.int32
        np.testing.assert_array_equal(tokenizer.decode_tokens(tokenizer.column_to_ids(column)).numpy(), tokenizer.decode_tokens(ids))


def test_grayscale_images_may_omit_the_channel_axis():
    tokenizer = ImageVQTokenizer(in_channels=1, downsample=4, **TINY).eval()
    with torch.no_grad():
        assert tokenizer.tokenize(_images(channels=1)[..., 0]).shape == (2, 4, 4)


def test_residual_quantizer_adds_a_depth_axis():
    tokenizer = ImageVQTokenizer(downsample=4, channels=8, latent_channels=8, quantizer="residual",
                                 quantizer_kwargs={"codebook_size": 16, "dim": 4, "depth": 2})  # fmt: skip
    assert tokenizer.token_grid((16, 32)) == (4, 8, 2)
    with torch.no_grad():
        assert tokenizer.tokenize(_images()).shape == (2, 4, 4, 2)


def test_errors_name_the_knob():
    with pytest.raises(ValueError, match="downsample"):
        ImageVQTokenizer(downsample=3)
    with pytest.raises(ValueError, match="multiple of downsample=8"):
        ImageVQTokenizer(downsample=8, **TINY).token_grid((20, 16))
    with pytest.raises(ValueError, match="in_channels"):
        ImageVQTokenizer(downsample=4, **TINY).tokenize(_images(channels=1))
    with pytest.raises(ValueError, match="Did you mean 'bsq'"):
        ImageVQTokenizer(quantizer="bsqq")


def test_fit_on_an_iterable_of_batches_logs_and_reports(caplog, tmp_path):
    torch.manual_seed(0)
    tokenizer = ImageVQTokenizer(downsample=4, channels=8, latent_channels=8, quantizer="vq",
                                 quantizer_kwargs={"codebook_size": 16, "dim": 4})  # fmt: skip
    batches = [_images(batch=4, seed=seed) for seed in range(3)]
    with caplog.at_level(logging.INFO, logger="tokenloom.tokenizers.image_vq"):
        metrics = tokenizer.fit(batches, steps=12, batch_size=4, learning_rate=1e-3, log_every=6, reseed_every=4)
    assert len(metrics["losses"]) == 12 and np.isfinite(metrics["losses"]).all()
    assert 0 < metrics["codebook_usage"] <= 1 and np.isfinite(metrics["psnr"])
    assert any("psnr" in record.getMessage() and "usage" in record.getMessage() for record in caplog.records)
    tokenizer.save_pretrained(tmp_path / "fitted")
    assert not load_tokenizer(tmp_path / "fitted").training


def _digits_16x16() -> np.ndarray:
    from sklearn.datasets import load_digits

    digits_B88 = load_digits().images  # 0..16
    digits_B1616 = digits_B88.repeat(2, axis=1).repeat(2, axis=2)  # nearest-neighbour 8x8 -> 16x16
    return np.round(digits_B1616 * 255 / 16).astype(np.uint8)[..., None]  # (1797, 16, 16, 1)


def test_fsq_tokenizer_reaches_24_db_on_digits_using_most_codes():
    """Issue 3's bar: PSNR >= 24 dB with >= 80% of the codes used, in 800 steps (the time, ~12 s on 2 idle
    cores, is printed, not asserted: a shared machine's load decides it). One thread: two OpenMP threads on
    cores busy elsewhere wait on each other far more than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        tokenizer = ImageVQTokenizer(in_channels=1, downsample=4, channels=16, latent_channels=32,
                                     quantizer="fsq", quantizer_kwargs={"levels": [8, 5, 5, 5]})  # fmt: skip
        started = time.perf_counter()
        metrics = tokenizer.fit(_digits_16x16(), steps=800, batch_size=32, learning_rate=3e-3, log_every=200)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    print(f"digits 16x16, FSQ (8,5,5,5), 4x4 grid: PSNR {metrics['psnr']:.2f} dB, "
          f"codebook usage {100 * metrics['codebook_usage']:.1f}%, {seconds:.1f} s")  # fmt: skip
    assert metrics["psnr"] >= 24.0
    assert metrics["codebook_usage"] >= 0.8

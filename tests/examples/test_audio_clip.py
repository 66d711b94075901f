"""examples/audio_clip.py runs with small settings and its figures are in range."""


from tests.examples.helpers import load_example


def test_audio_clip(tmp_path):
    results = load_example("audio_clip").main(["--out", str(tmp_path), "--codec-steps", "30"])
    assert results["mulaw_snr_db"] > 30
    assert results["codec_snr_db"] > results["codec_snr_db_before"] + 1.0  # fitting helps, even this briefly
    assert (tmp_path / "mulaw.wav").stat().st_size > 0 and (tmp_path / "codec.wav").stat().st_size > 0

"""examples/interleaved.py: records pack and unpack, every job unpacks into its modalities, and a small run's
figures are in range."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from tests.examples.helpers import load_example
from tokenloom.generators import LoomModel, generate
from tokenloom.registry import TOKENIZERS

interleaved = load_example("interleaved")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small matrices: on 2 shared cores, torch's second thread costs more in synchronisation than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def layout():
    torch.manual_seed(0)
    image_tokenizer = TOKENIZERS.get("image/vq")(  # untrained: only its vocab_size and config matter here
        in_channels=1,
        downsample=4,
        channels=8,
        latent_channels=8,
        quantizer="fsq",
        quantizer_kwargs={"levels": [8, 5, 5]},
    )
    return interleaved.build_layout(image_tokenizer, interleaved.series_bins())


def test_series_classes_survive_tokenization():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    series = interleaved.class_series(labels, rng)
    bins = interleaved.series_bins()
    ids = interleaved.tokenize_series(bins, series)
    decoded = bins.decode_tokens(torch.from_numpy(ids), scale_B=torch.ones(len(ids))).numpy()
    assert ids.shape == (200, interleaved.SERIES_STEPS)
    assert np.abs(decoded - series).max() <= 0.05 + 1e-6  # half a bin: the noisy series stay inside [-1.5, 1.5]
    assert (interleaved.series_class(series) == labels).all() and (interleaved.series_class(decoded) == labels).all()


def test_every_task_packs_and_unpacks_its_segments_in_order(layout):
    image_ids = np.arange(16).reshape(4, 4) * 7
    series_ids = np.arange(2, 2 + interleaved.SERIES_STEPS)
    for task, order in interleaved.TASKS.items():
        packed = layout.pack(interleaved.record(task, 3, image_ids, series_ids))
        assert len(packed.ids_L) == 49
        segments = layout.unpack(packed.ids_L)
        assert [s.modality for s in segments] == list(order)
        expected = {"label": np.array([3]), "image": image_ids, "timeseries": series_ids}
        assert all(np.array_equal(s.ids, expected[s.modality]) for s in segments)


def test_generated_sequences_unpack_into_each_tasks_modalities(layout):
    torch.manual_seed(0)
    model = LoomModel(layout, {**interleaved.BACKBONE, "hidden_size": 32, "intermediate_size": 64})
    prompts = {"label": [np.array([3])], "image": [np.zeros((4, 4), int)], "timeseries": [np.full(24, 5)]}
    for first, *rest in interleaved.TASKS.values():
        segments = [(m, interleaved.SEGMENT_LENGTHS[m]) for m in rest]
        rows = generate(model, [[(first, p)] for p in prompts[first]], segments=segments).segments()
        assert [s.modality for s in rows[0]] == [first, *rest]
        assert [s.ids.size for s in rows[0]] == [interleaved.SEGMENT_LENGTHS[m] for m in (first, *rest)]
        assert not any(s.truncated for s in rows[0])


def test_interleaved_small_run(tmp_path):
    results = interleaved.main(["--steps", "600", "--per-class", "5", "--out", str(tmp_path)])
    assert results["pack_unpack_round_trip"] and results["sequence_length"] == 49
    assert results["tokenizer_reconstruction_accuracy"] >= 0.8  # 0.90-1.0 over seeds 0-2
    tasks = results["tasks"]
    # Seeds 0-2 at these settings (50 prompts per task; chance is 0.1): label -> image 0.76-0.88, -> series
    # 0.98-1.0; series -> label 0.94-0.98, -> image 0.46-0.70; image -> label 0.68-0.74, the series agreeing with
    # the label read 0.96-1.0. About 30 s of CPU on one thread.
    assert tasks["label->image->series"]["image_accuracy"] >= 0.6
    assert tasks["label->image->series"]["timeseries_accuracy"] >= 0.9
    assert tasks["series->label->image"]["label_accuracy"] >= 0.85
    assert tasks["series->label->image"]["image_accuracy"] >= 0.3
    assert tasks["image->label->series"]["label_accuracy"] >= 0.5
    assert tasks["image->label->series"]["agreement"] >= 0.9
    if importlib.util.find_spec("matplotlib"):  # the example skips its picture without it
        assert (tmp_path / "interleaved.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text()) == results

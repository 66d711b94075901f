"""Generation you can call and generation as a pipeline, over a tiny generator folder (untrained parts)."""

import threading

import numpy as np
import pytest

import tokenloom as tl
from tests.helpers import tiny_generator
from tokenloom.generators.bundle import GenerationRequest, GeneratorBundle
from tokenloom.pipelines.config import pipeline_from_config
from tokenloom.pipelines.demo import example_path


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return tiny_generator(tmp_path_factory.mktemp("generator"))


@pytest.mark.parametrize("strategy, passes", [("next_token", 16), ("next_scale", 2), ("speculative", None)])
def test_each_strategy_packs_generates_and_decodes(generator, strategy, passes):
    bundle = GeneratorBundle.load(generator)
    prompts = bundle.pack([3, 7, 0], strategy)
    layout = bundle.layout(strategy)
    assert layout.describe(prompts[0]) == "<bos> <begin:label> label:3 <end:label>"
    out = bundle.generate(prompts, GenerationRequest(strategy, cfg=2.0, temperature=0.0))
    images = bundle.decode(out)
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    assert out.ids_BN.shape == (3, 16 if strategy != "next_scale" else 5)
    if passes is not None:
        assert out.forward_passes == passes
    else:  # speculative: the same greedy ids as next-token
        assert out.forward_passes <= 17  # at worst one token a pass (plus the last pass that closes the window)
        plain = bundle.generate(prompts, GenerationRequest("next_token", cfg=2.0, temperature=0.0))
        np.testing.assert_array_equal(out.ids_BN, plain.ids_BN)
    for sequence, ids in zip(out.sequences, out.ids_BN):  # the whole sequence unpacks to label + the codes
        label, image = layout.unpack(sequence)
        assert label.modality == "label" and image.modality == "image"
        np.testing.assert_array_equal(image.ids.reshape(-1), ids)


def test_bad_labels_and_paths_are_named(generator, tmp_path):
    bundle = GeneratorBundle.load(generator)
    with pytest.raises(ValueError, match=r"row 1: label=12 is not a class id in \[0, 10\)"):
        bundle.pack([3, 12])
    with pytest.raises(ValueError, match="not in this bundle"):
        bundle.request("par")
    with pytest.raises(ValueError, match="outside the bundle"):
        GeneratorBundle.write(tmp_path, {"next_token": {"model": "../elsewhere", "tokenizer": "tokenizer"}})
    with pytest.raises(FileNotFoundError, match="generator folder"):
        GeneratorBundle.load(tmp_path)


def test_load_pipeline_batches_concurrent_callers(generator):
    with tl.load_pipeline(generator, max_wait_ms=200) as gen:
        alone = gen.generate(label=[4, 2], strategy="next_token")
        assert alone.images.shape == (2, 16, 16, 1) and alone.batch_size == 2 and alone.forward_passes == 16
        results, errors = {}, []

        def call(i):
            try:
                results[i] = gen.generate(label=[i], strategy="next_token")
            except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(error)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and sorted(results) == list(range(6))
        assert max(r.batch_size for r in results.values()) > 1  # callers shared a batch
        assert results[4].ids.shape == (1, 16)
        np.testing.assert_array_equal(results[4].ids[0], alone.ids[0])  # greedy: batching changes nothing
        with pytest.raises(ValueError, match="label=11"):
            gen.generate(label=11)


def test_the_generation_yaml_runs_and_sets_bad_rows_aside(generator, tmp_path):
    overrides = [f"vars.path={generator}", "vars.strategy=next_scale", "vars.tokenizer=tokenizer_multiscale",
                 f"sink.path={tmp_path / 'out'}", "source.items=[{label: 1}, {label: 5}, {label: 42}, {label: 9}]"]
    report = pipeline_from_config(example_path("digits_generation.yaml"), overrides).run(executor="local")
    assert report.rows_in == 4 and report.rows_written == 3 and report.rows_errors == 1 and report.reconciles
    table = tl.read_output(str(tmp_path / "out"))
    assert sorted(table.column("label").to_pylist()) == [1, 5, 9]
    assert set(table.column("strategy").to_pylist()) == {"next_scale"}
    assert set(table.column("forward_passes").to_pylist()) == {2}
    errors = tl.read_output(str(tmp_path / "out"), errors=True).to_pylist()
    assert errors[0]["_error_field"] == "label" and "label=42" in errors[0]["_error"] if "_error" in errors[0] else True

"""VocabularyLayout and packing: id ranges, pack/unpack round trip for every modality, the grammar, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.generators.conftest import every_modality_layout, small_layout
from tokenloom.generators import SPECIAL, ModalityVocab, Segment, VocabularyLayout

LAYOUT = every_modality_layout()


@st.composite
def records(draw):
    """Random records over every modality of LAYOUT: 0-6 segments, each of 1-3 axes of 0-4 codes."""
    segments = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(LAYOUT.names))
        if name == "label":
            shape = (1,)
        else:
            shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
        seed = draw(st.integers(0, 2**16))
        ids = np.random.default_rng(seed).integers(0, LAYOUT.modalities[LAYOUT.index(name)].size, size=shape)
        segments.append(Segment(name, ids))
    return segments


def test_ranges_are_contiguous_and_disjoint():
    layout = LAYOUT
    assert (layout.bos_id, layout.eos_id, layout.pad_id, layout.null_id) == (0, 1, 2, 3)
    covered = np.zeros(layout.vocab_size, dtype=int)
    covered[: layout.num_specials] += 1
    for name in layout.names:
        lo, hi = layout.range(name)
        assert hi - lo == layout.modalities[layout.index(name)].size
        covered[lo:hi] += 1
        assert layout.begin_id(name) < layout.num_specials and layout.end_id(name) < layout.num_specials
    assert (covered == 1).all()
    assert layout.num_specials == 4 + 2 * len(layout.names)


@settings(max_examples=60, deadline=None)
@given(records())
def test_pack_unpack_round_trip_every_modality(record):
    packed = LAYOUT.pack(record)
    assert packed.ids_L[0] == LAYOUT.bos_id and packed.ids_L[-1] == LAYOUT.eos_id
    assert len(packed.ids_L) == 2 + sum(2 + s.ids.size for s in record)
    for position, token in enumerate(packed.ids_L.tolist()):
        assert packed.modality_L[position] == LAYOUT.modality_of_id[token]
    segments = LAYOUT.unpack(packed.ids_L, packed.shapes)
    assert [s.modality for s in segments] == [s.modality for s in record]
    for got, want in zip(segments, record):
        assert got.ids.shape == want.ids.shape and np.array_equal(got.ids, want.ids)
        assert not got.truncated and not got.null
    # without the shapes each segment comes back flat, and as a torch tensor input too
    flat = LAYOUT.unpack(torch.from_numpy(packed.ids_L))
    assert all(np.array_equal(g.ids, w.ids.reshape(-1)) for g, w in zip(flat, record))


@settings(max_examples=40, deadline=None)
@given(records(), st.integers(0, 200))
def test_truncated_final_segment_is_reported(record, cut):
    ids_L = LAYOUT.pack(record, add_eos=False).ids_L
    cut = min(cut, len(ids_L))
    segments = LAYOUT.unpack(ids_L[:cut])
    inside = LAYOUT.state_of(ids_L[:cut]).open != SPECIAL
    assert [s.truncated for s in segments] == [False] * (len(segments) - inside) + [True] * inside
    for got, want in zip(segments, record):
        assert np.array_equal(got.ids.reshape(-1), want.ids.reshape(-1)[: got.ids.size])


@settings(max_examples=40, deadline=None)
@given(records())
def test_speakers_agree_with_next_modality_on_every_prefix(record):
    ids_L = LAYOUT.pack(record).ids_L
    speakers_L = LAYOUT.speakers(ids_L)
    for t in range(len(ids_L)):
        assert speakers_L[t] == LAYOUT.next_modality(ids_L[: t + 1])
    # each packed token is one the speaking head may emit (or one the grammar forces)
    allowed = LAYOUT.allowed_table().numpy()
    forced_L = LAYOUT.speakers(ids_L, forced=-2) == -2
    for t in range(len(ids_L) - 1):
        assert forced_L[t] or allowed[speakers_L[t] + 1, ids_L[t + 1]]


def test_grid_positions_travel_with_the_tokens():
    layout = small_layout()
    record = [("label", [2]), ("image", np.arange(4).reshape(2, 2), (2, 2)), ("text", [1, 2, 3], (3,))]
    packed = layout.pack(record)
    image = slice(5, 9)  # <bos> <begin:label> 2 <end:label> <begin:image> [4 codes]
    assert packed.positions["row"][image].tolist() == [0, 0, 1, 1]
    assert packed.positions["col"][image].tolist() == [0, 1, 0, 1]
    assert packed.positions["frame"][11:14].tolist() == [0, 1, 2]
    assert packed.positions["row"][:5].tolist() == [-1] * 5
    scales = layout.pack([("image", np.arange(5), ((1, 1), (2, 2)))]).positions
    assert scales["scale"][2:7].tolist() == [0, 1, 1, 1, 1] and scales["col"][2:7].tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="grid"):
        layout.pack([("image", np.arange(4), (3, 2))])


def test_unpack_gives_a_complete_segment_its_modality_shape():
    layout = small_layout()
    ids_L = layout.pack([("image", [1, 2, 3, 4])]).ids_L
    (image,) = layout.unpack(ids_L)
    assert image.ids.shape == (2, 2) and image.ids.tolist() == [[1, 2], [3, 4]]


def test_next_modality_follows_the_grammar():
    layout = small_layout()
    label, text, image = (layout.index(n) for n in ("label", "text", "image"))
    bos, boi = [layout.bos_id], [layout.bos_id, layout.begin_id("image")]
    assert layout.next_modality(bos) == SPECIAL
    assert layout.next_modality(boi) == image
    assert layout.next_modality(boi + [layout.range("image")[0]] * 3) == image
    assert layout.next_modality(boi + [layout.range("image")[0]] * 4) == SPECIAL  # the fixed length is reached
    assert layout.next_modality(bos + [layout.begin_id("text")] + [layout.range("text")[0]] * 50) == text
    assert layout.next_modality(bos + [layout.begin_id("label")]) == label
    assert layout.next_action(layout.state_of(bos + [layout.eos_id])) == (layout.pad_id, SPECIAL)
    allowed = layout.allowed_table()
    assert allowed[text + 1, layout.end_id("text")] and not allowed[image + 1, layout.end_id("image")]
    assert allowed[0, layout.eos_id] and not allowed[0, layout.pad_id] and not allowed[0, layout.null_id]


def test_drop_condition_keeps_the_structure():
    layout = small_layout()
    ids_L = layout.pack([("label", [1]), ("text", [4, 5]), ("image", [0, 1, 2, 3])], add_eos=False).ids_L
    dropped = layout.drop_condition(ids_L, ["label", "text"])
    segments = layout.unpack(dropped)
    assert [(s.modality, s.null, s.ids.size) for s in segments] == [
        ("label", True, 0),
        ("text", True, 0),
        ("image", False, 4),
    ]
    assert layout.describe(layout.drop_condition(ids_L)).count("<null>") == 3


def test_layout_saves_as_json_and_loads_back():
    layout = VocabularyLayout(
        [
            ModalityVocab("label", 10, 1),
            ModalityVocab("image", 64, shape=(8, 8), tokenizer={"registry_key": "image/vq"}),
        ]
    )
    data = json.loads(json.dumps(layout.to_dict()))
    again = VocabularyLayout.from_dict(data)
    assert again == layout and again.modalities[1].shape == (8, 8) and again.modalities[1].tokens_per_segment == 64
    data["modalities"][1]["offset"] += 1
    with pytest.raises(ValueError, match="ids differ"):
        VocabularyLayout.from_dict(data)


def test_pack_batch_pads_left_or_right():
    layout = small_layout()
    records = [[("label", [1])], [("label", [2]), ("text", [1, 2])]]
    left = layout.pack_batch(records, padding_side="left")
    right = layout.pack_batch(records, padding_side="right")
    assert left.ids_BL.shape == right.ids_BL.shape == (2, 9)
    assert left.attention_mask_BL[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert right.attention_mask_BL[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert (left.ids_BL[left.attention_mask_BL == 0] == layout.pad_id).all()
    assert torch.equal(left.ids_BL[0, 4:], right.ids_BL[0, :5])
    assert (left.modality_BL[0, :4] == SPECIAL).all()


def test_bad_input_names_the_problem():
    layout = small_layout()
    with pytest.raises(ValueError, match="outside \\[0, 8\\)"):
        layout.pack([("image", [8])])
    with pytest.raises(KeyError, match="not in this layout"):
        layout.pack([("audio", [0])])
    with pytest.raises(ValueError, match="inside a image segment"):
        layout.unpack([layout.bos_id, layout.begin_id("image"), layout.range("text")[0]])
    with pytest.raises(ValueError, match="outside any segment"):
        layout.unpack([layout.bos_id, layout.range("text")[0]])


def test_a_modality_from_a_registered_tokenizer():
    from tokenloom.tokenizers.text_bytes import ByteTokenizer

    text = ModalityVocab.from_tokenizer(ByteTokenizer(add_bos=False))
    assert (text.name, text.size) == ("text", 259)
    assert text.tokenizer == {
        "registry_key": "text/bytes",
        "config": {"add_bos": False, "add_eos": True, "errors": "replace"},
    }
    layout = VocabularyLayout([ModalityVocab("label", 3, 1), text])
    ids = ByteTokenizer().tokenize("hi")
    (segment,) = layout.unpack(layout.pack([("text", ids)]).ids_L)
    assert ByteTokenizer().decode_tokens(segment.ids) == "hi"


def test_a_dropped_multi_code_segment_forces_its_end_and_keeps_the_loss_finite():
    from tests.unit.generators.conftest import TINY_LLAMA
    from tokenloom.generators import LoomModel

    layout = VocabularyLayout([ModalityVocab("label", 10, tokens_per_segment=1), ModalityVocab("image", 16, shape=(2, 2)),
                               ModalityVocab("text", 8)])  # fmt: skip
    ids = layout.pack([("image", np.zeros((2, 2), int)), ("text", [1, 2]), ("label", [3])]).ids_L
    dropped = layout.drop_condition(ids, ["image", "text"])
    assert layout.describe(dropped).startswith("<bos> <begin:image> <null> <end:image> <begin:text> <null> <end:text>")
    # after <null> the grammar forces the end token (-2: not scored), for fixed and variable lengths alike
    assert layout.speakers(dropped, forced=-2)[[2, 5]].tolist() == [-2, -2]
    torch.manual_seed(0)
    model = LoomModel(layout, TINY_LLAMA)
    loss = model.next_token_loss(torch.from_numpy(dropped)[None])
    assert torch.isfinite(loss)

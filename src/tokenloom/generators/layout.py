"""The shared vocabulary: one contiguous id range per modality, special tokens, packing and unpacking.

Ids, in order: BOS, EOS, PAD, NULL (the null condition of classifier-free guidance), then a begin and an end
token per modality, then each modality's codes ``[offset, offset + size)`` in declaration order.

A record is a list of segments ``(modality, local ids of any shape[, grid])``; packing interleaves them:

    <bos> <begin:label> 3 <end:label> <begin:image> i_0 ... i_15 <end:image> <eos>

    pack(record) -> PackedSequence(ids_L, modality_L (-1 for specials), positions {row, col, scale, frame})
    unpack(ids_L) -> [Segment(modality, local ids in their shape, truncated=...)]

The grammar that decoding follows (``advance``/``next_action``): after BOS or an end token a special speaks
(a begin token or EOS); inside a segment of modality m the head of m speaks, until the segment's fixed
length (``tokens_per_segment``) forces its end token; a variable-length modality's head may also emit its own
end token. After EOS only PAD follows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from tokenloom.generators import packing
from tokenloom.generators.packing import PackedBatch, PackedSequence, Record, Segment, as_numpy

logger = logging.getLogger(__name__)

SPECIAL_NAMES = ("bos", "eos", "pad", "null")
SPECIAL = -1  # the modality index of special tokens, and of the special-token head
LAYOUT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModalityVocab:
    """One modality's share of the vocabulary.

    size: number of codes (classes for "label", the tokenizer's vocab_size otherwise).
    tokens_per_segment: a fixed segment length (e.g. 256 for a 16x16 image); None for variable-length segments
        (text), whose head may then emit the modality's end token.
    shape: the default shape that `unpack` gives a complete segment of this modality (e.g. (16, 16)).
    tokenizer: the tokenizer that owns these codes, as {"registry_key": ..., "config": {...}}, for the bundle.
    """

    name: str
    size: int
    tokens_per_segment: int | None = None
    shape: tuple[int, ...] | None = None
    tokenizer: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"modality {self.name!r} has size={self.size}; it needs at least one code")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
            if self.tokens_per_segment is None:
                object.__setattr__(self, "tokens_per_segment", int(np.prod(self.shape)))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, name: str | None = None, **options: Any) -> ModalityVocab:
        """The codes of a registered tokenizer (its ``vocab_size``), recording its registry key and config."""
        key = type(tokenizer).registry_key
        if not key:
            raise ValueError(
                f"{type(tokenizer).__name__} is not registered; a layout records tokenizers by registry key"
            )
        record = {"registry_key": key, "config": tokenizer.config}
        return cls(name or tokenizer.modality, int(tokenizer.vocab_size), tokenizer=record, **options)


class GrammarState(NamedTuple):
    """Where a prefix stands: the open segment's modality (-1 none), codes seen in it (-1: it held NULL),
    whether EOS was seen."""

    open: int = SPECIAL
    count: int = 0
    ended: bool = False


class VocabularyLayout:
    """Id ranges of every modality in one shared vocabulary, plus the special tokens."""

    def __init__(self, modalities: Sequence[ModalityVocab | Mapping[str, Any]]) -> None:
        self.modalities = [m if isinstance(m, ModalityVocab) else ModalityVocab(**m) for m in modalities]
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"modality names must be unique and at least one, got {names}")
        self._index = {name: i for i, name in enumerate(names)}
        self.num_specials = len(SPECIAL_NAMES) + 2 * len(names)
        self.offsets = list(self.num_specials + np.cumsum([0] + [m.size for m in self.modalities[:-1]]))
        self.offsets = [int(o) for o in self.offsets]
        self.vocab_size = self.num_specials + sum(m.size for m in self.modalities)
        self.bos_id, self.eos_id, self.pad_id, self.null_id = range(len(SPECIAL_NAMES))
        # id -> modality index (-1 specials); id -> the modality a begin/end token opens/closes (-1 otherwise)
        self.modality_of_id = np.full(self.vocab_size, SPECIAL, dtype=np.int64)
        self.begin_of_id = np.full(self.vocab_size, SPECIAL, dtype=np.int64)
        self.end_of_id = np.full(self.vocab_size, SPECIAL, dtype=np.int64)
        for i, m in enumerate(self.modalities):
            self.modality_of_id[self.offsets[i] : self.offsets[i] + m.size] = i
            self.begin_of_id[self.begin_id(i)] = i
            self.end_of_id[self.end_id(i)] = i

    # -- lookups ----------------------------------------------------------------------------------
    @classmethod
    def from_sizes(cls, **sizes: int) -> VocabularyLayout:
        """``VocabularyLayout.from_sizes(label=10, image=16)``: variable-length segments, declaration order."""
        return cls([ModalityVocab(name, size) for name, size in sizes.items()])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def index(self, modality: str | int) -> int:
        if isinstance(modality, (int, np.integer)):
            return int(modality)
        try:
            return self._index[modality]
        except KeyError:
            raise KeyError(f"modality {modality!r} is not in this layout; it has {self.names}") from None

    def range(self, modality: str | int) -> tuple[int, int]:
        i = self.index(modality)
        return self.offsets[i], self.offsets[i] + self.modalities[i].size

    def begin_id(self, modality: str | int) -> int:
        return len(SPECIAL_NAMES) + 2 * self.index(modality)

    def end_id(self, modality: str | int) -> int:
        return len(SPECIAL_NAMES) + 2 * self.index(modality) + 1

    def token_name(self, token: int) -> str:
        token = int(token)
        if token < len(SPECIAL_NAMES):
            return f"<{SPECIAL_NAMES[token]}>"
        if token < self.num_specials:
            i, is_end = divmod(token - len(SPECIAL_NAMES), 2)
            return f"<{'end' if is_end else 'begin'}:{self.names[i]}>"
        if token >= self.vocab_size:
            return f"<out of vocabulary {token}>"
        i = int(self.modality_of_id[token])
        return f"{self.names[i]}:{token - self.offsets[i]}"

    def describe(self, ids_L: Any) -> str:
        return " ".join(self.token_name(t) for t in np.asarray(ids_L).tolist())

    # -- packing (see packing.py) ------------------------------------------------------------------
    def pack(self, record: Record, add_bos: bool = True, add_eos: bool = True) -> PackedSequence:
        """Interleave a record's segments into one sequence of shared-vocabulary ids."""
        return packing.pack(self, record, add_bos=add_bos, add_eos=add_eos)

    def pack_batch(
        self, records: Sequence[Record | PackedSequence], padding_side: str = "left", add_eos: bool = True
    ) -> PackedBatch:
        """Pack records (or packed sequences) and pad them with PAD into (B, L) tensors plus an attention mask."""
        return packing.pack_batch(self, records, padding_side=padding_side, add_eos=add_eos)

    def unpack(self, ids_L: Any, shapes: Sequence[tuple[int, ...] | None] | None = None) -> list[Segment]:
        """Route a sequence's segments back to their modalities as local ids (see `packing.unpack`)."""
        return packing.unpack(self, ids_L, shapes)

    def drop_condition(self, ids_L: Any, modalities: Sequence[str] | None = None) -> np.ndarray:
        """The same sequence with each segment of ``modalities`` (all when None) holding only the NULL token."""
        return packing.drop_condition(self, ids_L, modalities)

    # -- the grammar decoding follows ----------------------------------------------------------------
    def advance(self, state: GrammarState, token: int) -> GrammarState:
        if state.ended:
            return state
        if token == self.eos_id and state.open == SPECIAL:
            return GrammarState(ended=True)
        if state.open == SPECIAL:
            begin = int(self.begin_of_id[token])
            return GrammarState(begin, 0) if begin != SPECIAL else state
        if self.end_of_id[token] == state.open:
            return GrammarState()
        if token == self.null_id:  # a dropped condition: the segment holds only NULL, its end comes next
            return GrammarState(state.open, -1)
        return GrammarState(state.open, state.count + 1)

    def next_action(self, state: GrammarState) -> tuple[int | None, int]:
        """(forced token or None, the modality whose head speaks next: -1 for the special-token head)."""
        if state.ended:
            return self.pad_id, SPECIAL
        if state.open == SPECIAL:
            return None, SPECIAL
        fixed = self.modalities[state.open].tokens_per_segment
        if state.count < 0 or (fixed is not None and state.count >= fixed):
            return self.end_id(state.open), SPECIAL
        return None, state.open

    def state_of(self, prefix: Any) -> GrammarState:
        state = GrammarState()
        for token in as_numpy(prefix).reshape(-1).tolist():
            state = self.advance(state, token)
        return state

    def next_modality(self, prefix: Any) -> int:
        """The modality whose head must speak after ``prefix`` (-1: a special token comes next)."""
        forced, speaker = self.next_action(self.state_of(prefix))
        return SPECIAL if forced is not None else speaker

    def speakers(self, ids_L: Any, forced: int = SPECIAL) -> np.ndarray:
        """(L,) the head that predicts token t+1 from position t: the training counterpart of `next_modality`.

        Positions whose next token the grammar forces get ``forced`` (e.g. -2 so a loss can skip them).
        """
        out, state = [], GrammarState()
        for token in as_numpy(ids_L).reshape(-1).tolist():
            state = self.advance(state, token)
            forced_id, speaker = self.next_action(state)
            out.append(forced if forced_id is not None else speaker)
        return np.asarray(out, dtype=np.int64)

    def allowed_table(self) -> torch.Tensor:
        """(M + 1, V) bool: row 0 the ids the special head may emit (begin tokens, EOS), row m + 1 modality m's."""
        table = torch.zeros(len(self.modalities) + 1, self.vocab_size, dtype=torch.bool)
        table[0, [self.begin_id(i) for i in range(len(self.modalities))] + [self.eos_id]] = True
        for i, m in enumerate(self.modalities):
            lo, hi = self.range(i)
            table[i + 1, lo:hi] = True
            if m.tokens_per_segment is None:
                table[i + 1, self.end_id(i)] = True
        return table

    # -- saving -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        specials = {name: i for i, name in enumerate(SPECIAL_NAMES)}
        modalities = []
        for m in self.modalities:
            modalities.append(
                {
                    "name": m.name,
                    "size": m.size,
                    "tokens_per_segment": m.tokens_per_segment,
                    "shape": list(m.shape) if m.shape is not None else None,
                    "tokenizer": m.tokenizer,
                    # derived, written so a reader of config.json sees the ids; from_dict checks them
                    "offset": self.range(m.name)[0],
                    "begin_id": self.begin_id(m.name),
                    "end_id": self.end_id(m.name),
                }
            )
        return {
            "format_version": LAYOUT_FORMAT_VERSION,
            "special_ids": specials,
            "modalities": modalities,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VocabularyLayout:
        if data.get("format_version") != LAYOUT_FORMAT_VERSION:
            raise ValueError(
                f"layout format_version {data.get('format_version')!r}; this tokenloom reads {LAYOUT_FORMAT_VERSION}"
            )
        fields = ("name", "size", "tokens_per_segment", "shape", "tokenizer")
        layout = cls([{k: m.get(k) for k in fields} for m in data["modalities"]])
        if layout.to_dict() != dict(data):
            raise ValueError("the saved layout's ids differ from the ones this tokenloom derives; refusing to guess")
        return layout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VocabularyLayout) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        ranges = ", ".join(f"{m.name}=[{o}, {o + m.size})" for m, o in zip(self.modalities, self.offsets))
        return f"VocabularyLayout(vocab_size={self.vocab_size}, specials={self.num_specials}, {ranges})"

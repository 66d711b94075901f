"""Applies one node to one batch, the same way on every executor.

Rows that already carry an error pass through untouched. If ``process_batch`` raises, the batch is
retried row by row so that only the rows at fault are set aside, each with the node, the field and
the reason; the other rows go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tokenloom.modality import (
    ERROR,
    ERROR_FIELD,
    ERROR_NODE,
    ROW_ID,
    Batch,
    as_column,
    batch_len,
    empty_like,
    take,
    with_error_columns,
)
from tokenloom.nodes.base import Node, RowError

logger = logging.getLogger(__name__)


@dataclass
class NodeStats:
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0

    def add(self, other: NodeStats) -> None:
        self.rows += other.rows
        self.errors += other.errors
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, float]:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return {"rows": self.rows, "errors": self.errors, "seconds": round(self.seconds, 4), "rows_per_s": round(rate, 1)}


class NodeRunner:
    """Wraps a node: setup once, then ``runner(batch) -> batch`` with the node's columns merged in."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.stats = NodeStats()
        self._ready = False

    def setup(self) -> None:
        if not self._ready:
            self.node.setup()
            self._ready = True

    def teardown(self) -> None:
        if self._ready:
            self.node.teardown()
            self._ready = False

    def __call__(self, batch: Batch) -> Batch:
        self.setup()
        start = time.perf_counter()
        batch = with_error_columns(dict(batch))
        n = batch_len(batch)
        ok = np.flatnonzero(batch[ERROR] == "")
        size = self.node.batch_size or max(len(ok), 1)
        chunks = [self._process(take(batch, ok[i : i + size])) for i in range(0, len(ok), size)]
        out = self._merge(batch, ok, chunks, n)
        errors = int(sum(int((c[ERROR] != "").sum()) for c in chunks))
        self.stats.add(NodeStats(rows=len(ok), errors=errors, seconds=time.perf_counter() - start))
        return out

    def _process(self, batch: Batch) -> Batch:
        try:
            result = self._call(batch)
        except Exception:
            if batch_len(batch) == 1:
                return self._row_failed(batch)
            return self._row_by_row(batch)
        return result

    def _call(self, batch: Batch) -> Batch:
        result = self.node.process_batch(batch)
        if not isinstance(result, dict):
            raise TypeError(f"node {self.name!r}: process_batch must return a dict of columns, got {type(result).__name__}")
        out = dict(batch)
        n = batch_len(batch)
        for key, values in result.items():
            column = as_column(values)
            if len(column) != n:
                raise ValueError(
                    f"node {self.name!r}: column {key!r} has {len(column)} rows for a batch of {n}; "
                    "nodes map rows one to one (reject a row by raising RowError)"
                )
            out[key] = column
        return out

    def _row_by_row(self, batch: Batch) -> Batch:
        rows = [self._process(take(batch, [i])) for i in range(batch_len(batch))]
        return _concat_rows(rows)

    def _row_failed(self, row: Batch) -> Batch:
        try:
            self._call(row)
        except RowError as exc:
            reason, field = str(exc), exc.field
        except Exception as exc:
            reason, field = f"{type(exc).__name__}: {exc}", ""
        else:  # failed only in company: process it alone
            return self._call(row)
        row_id = row[ROW_ID][0] if ROW_ID in row else "?"
        logger.debug("node %s rejected row %s: %s", self.name, row_id, reason)
        row = dict(row)
        row[ERROR] = np.array([reason], dtype=object)
        row[ERROR_NODE] = np.array([self.name], dtype=object)
        row[ERROR_FIELD] = np.array([field], dtype=object)
        return row

    def _merge(self, batch: Batch, ok: np.ndarray, chunks: list[Batch], n: int) -> Batch:
        if not chunks:
            return batch
        if len(ok) == n and len(chunks) == 1:
            return chunks[0]
        processed = _concat_rows(chunks)
        out: Batch = {}
        keys = list(dict.fromkeys([*batch, *processed]))
        for key in keys:
            source = processed.get(key, batch.get(key))
            column = batch[key].copy() if key in batch else empty_like(source, n)
            if key in processed:
                if column.dtype != processed[key].dtype or column.shape[1:] != processed[key].shape[1:]:
                    column = _as_object(column)
                _assign(column, ok, processed[key])
            out[key] = column
        return out


def _concat_rows(rows: list[Batch]) -> Batch:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out: Batch = {}
    for key in keys:
        parts = [r[key] if key in r else empty_like(_first(rows, key), batch_len(r)) for r in rows]
        if len({(p.dtype, p.shape[1:]) for p in parts}) > 1:
            parts = [_as_object(p) for p in parts]
        out[key] = np.concatenate(parts, axis=0)
    return out


def _assign(column: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    if column.dtype == object and column.ndim == 1:
        for i, v in zip(index, values):
            column[i] = v
    else:
        column[index] = values


def _first(rows: list[Batch], key: str) -> np.ndarray:
    return next(r[key] for r in rows if key in r)


def _as_object(a: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=object)
    for i, v in enumerate(a):
        out[i] = v
    return out

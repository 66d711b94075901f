"""The local executor: in-process, deterministic, no Ray. The reference the Ray executor is tested against.

Each fragment of each source flows through the whole graph before the next is read, so memory holds
one fragment (plus each sink's unwritten rows) however large the input.
"""

from __future__ import annotations

import time
from typing import Any

from tokenloom.modality import Batch, batch_len, concat, with_error_columns
from tokenloom.nodes.io import Source
from tokenloom.nodes.sinks import Sink
from tokenloom.pipelines.executors import (
    SinkTarget,
    drop_rows,
    join_on_row_id,
    new_report,
    open_sinks,
    record,
    skip_set,
)
from tokenloom.pipelines.graph import ClusterSpec, Pipeline, Plan
from tokenloom.pipelines.progress import Progress
from tokenloom.pipelines.report import RunReport
from tokenloom.pipelines.runner import NodeRunner


class LocalExecutor:
    def __init__(self, cpus: float | None = None, gpus: float | None = None) -> None:
        self.cluster = ClusterSpec.local(cpus, gpus) if (cpus is not None or gpus is not None) else None

    def run(self, pipeline: Pipeline, resume: bool = False, progress: bool = True) -> RunReport:
        start = time.perf_counter()
        plan = pipeline.build(self.cluster)
        targets = open_sinks(plan, resume)
        report = new_report(plan, "local", targets)
        runners = {s.name: NodeRunner(s.node, s.name) for s in plan.transforms}
        try:
            for source in plan.sources:
                self._run_source(plan, source.name, runners, targets, report, progress)
        finally:
            for runner in runners.values():
                runner.teardown()
        report.nodes = {name: r.stats for name, r in runners.items()}
        report.seconds = time.perf_counter() - start
        for t in targets:
            t.store.write_report(report.as_dict())
        return report

    def _run_source(self, plan: Plan, source_name: str, runners: dict[str, NodeRunner],
                    targets: list[SinkTarget], report: RunReport, progress: bool) -> None:
        source: Source = plan.step(source_name).node  # type: ignore[assignment]
        skip = skip_set(plan, source_name, targets)
        mine = [t for t in targets if source_name in plan.ancestors(t.name)]
        steps = [s for s in plan.steps if source_name in plan.ancestors(s.name)]
        buffers: dict[str, list[Batch]] = {t.name: [] for t in mine}
        with Progress(f"{plan.name}:{source_name}", source.count_rows(), enabled=progress) as bar:
            for fragment in source.fragments():
                for batch in source.read_fragment(fragment):
                    n_read = batch_len(batch)
                    batch = with_error_columns(drop_rows(batch, skip))
                    report.rows_read += n_read
                    report.rows_skipped += n_read - batch_len(batch)
                    self._flow(batch, source_name, steps, runners, mine, buffers, report)
                    bar.update(n_read)
            for t in mine:
                self._flush(t, buffers, report, final=True)

    def _flow(self, batch: Batch, source_name: str, steps: list[Any], runners: dict[str, NodeRunner],
              targets: list[SinkTarget], buffers: dict[str, list[Batch]], report: RunReport) -> None:
        outputs: dict[str, Batch] = {source_name: batch}
        by_name = {t.name: t for t in targets}
        for step in steps:
            merged = join_on_row_id([outputs[i] for i in step.inputs])
            if isinstance(step.node, Sink):
                target = by_name[step.name]
                selected = target.select(merged)
                report.sinks[step.name].rows_in += batch_len(selected)
                buffers[step.name].append(selected)
                self._flush(target, buffers, report, final=False)
            else:
                outputs[step.name] = runners[step.name](merged)

    def _flush(self, target: SinkTarget, buffers: dict[str, list[Batch]], report: RunReport, final: bool) -> None:
        pending = buffers[target.name]
        size = target.step.node.batch_size or 1
        if not pending or (not final and sum(batch_len(b) for b in pending) < size):
            return
        rows = concat(pending)
        buffers[target.name] = []
        n = batch_len(rows)
        for i in range(0, n, size):
            chunk = {k: v[i : i + size] for k, v in rows.items()}
            if not final and i + size > n:  # keep the tail for the next shard
                buffers[target.name] = [chunk]
                break
            if batch_len(chunk):
                entry = target.store.write(chunk, target.columns)
                target.store.commit(entry)
                record(report, target, entry)

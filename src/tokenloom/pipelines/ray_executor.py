"""The Ray executor: the same plan on Ray Data's streaming executor.

Each source becomes a dataset with one block per fragment (read in Ray tasks, or read by the driver
when only the driver can see the data, as with ``memory://``). The nodes downstream of it run as
successive ``map_batches`` stages in topological order: a stateful node (one with ``setup``) as an
actor pool with its resources, batch size and concurrency; a stateless one as tasks. Fan-out and
fan-in need no join here: nodes write distinct columns (``build`` checks it), so running the branches
one after the other over the same rows gives each node exactly the columns it would get from a join
on ``row_id``. Sinks write shards in a last stage; the driver commits them to the manifest as they
come back, so a killed run loses only uncommitted shards.

Tuning (2 cores, 20,000 small images): actors get one torch thread per whole CPU they reserve, so two
actors do not fight over two cores; a source gets one block per fragment so every actor has input; Ray
Data's own progress bars are off in favour of ours.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from tokenloom.modality import Batch, batch_len, with_error_columns
from tokenloom.nodes.base import Node
from tokenloom.nodes.io import Source
from tokenloom.pipelines.executors import SinkTarget, drop_rows, new_report, open_sinks, record, skip_set
from tokenloom.pipelines.graph import ClusterSpec, Pipeline, Plan, Step
from tokenloom.pipelines.progress import Progress
from tokenloom.pipelines.report import RunReport
from tokenloom.pipelines.runner import NodeRunner, NodeStats

logger = logging.getLogger(__name__)

STATS_ACTOR = "tokenloom-node-stats"
READERS = 2  # fragments read at once per source


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect to Ray: ``address`` or ``RAY_ADDRESS`` joins a cluster, otherwise a local instance starts
    with its state in a fresh temp folder. Returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
            # Token auth stays on (Ray's default), with a token that lives in this process tree's
            # environment rather than in ~/.ray.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # Short path on purpose: Ray's socket paths must stay under ~107 characters.
        temp_dir = tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir, **kwargs)
    return True


class RayExecutor:
    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 shutdown: bool | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.shutdown = shutdown  # None: shut Ray down only if this executor started it

    def run(self, pipeline: Pipeline, resume: bool = False, progress: bool = True) -> RunReport:
        import ray

        start = time.perf_counter()
        started = ensure_ray(self.address, self.num_cpus, self.num_gpus)
        try:
            _configure_data_context()
            plan = pipeline.build(ClusterSpec.from_ray())
            targets = open_sinks(plan, resume)
            report = new_report(plan, "ray", targets)
            # One helper actor per Ray instance, kept between runs: a warm cluster spends no worker on it.
            stats = _StatsActor.options(name=STATS_ACTOR, get_if_exists=True, num_cpus=0).remote()  # type: ignore[attr-defined]
            ray.get(stats.reset.remote())
            for source in plan.sources:
                self._run_source(plan, source, targets, report, stats, progress)
            report.nodes = {name: NodeStats(**s) for name, s in ray.get(stats.get.remote()).items()}
            report.nodes = {s.name: report.nodes.get(s.name, NodeStats()) for s in plan.transforms}
            report.seconds = time.perf_counter() - start
            for t in targets:
                t.store.write_report(report.as_dict())
            return report
        finally:
            if self.shutdown or (self.shutdown is None and started):
                ray.shutdown()

    def _run_source(self, plan: Plan, source_step: Step, targets: list[SinkTarget], report: RunReport,
                    stats: Any, progress: bool) -> None:
        import ray

        source: Source = source_step.node  # type: ignore[assignment]
        mine = [t for t in targets if source_step.name in plan.ancestors(t.name)]
        skip = skip_set(plan, source_step.name, targets)
        ds = _read(source, skip, stats, _read_key(source_step.name))
        steps = [s for s in plan.transforms if source_step.name in plan.ancestors(s.name)]
        pools = [s.node for s in steps if s.node.stateful and s.node.concurrency is None]
        for step in steps:
            ds = _map_stage(ds, step, stats, pools)
        driver_writes = any(t.store.fs.protocol in ("memory", ("memory",)) for t in mine)
        with Progress(f"{plan.name}:{source_step.name}", source.count_rows(), enabled=progress) as bar:
            if driver_writes:
                self._write_in_driver(ds, mine, report, bar)
            else:
                self._write_in_workers(ds, mine, report, bar)
        counts = ray.get(stats.get.remote()).get(_read_key(source_step.name), {"rows": 0, "errors": 0})
        read, skipped = int(counts["rows"]), int(counts["errors"])
        report.rows_read += read
        report.rows_skipped += skipped

    def _write_in_workers(self, ds: Any, targets: list[SinkTarget], report: RunReport, bar: Progress) -> None:
        size = min(t.step.node.batch_size or 4096 for t in targets)
        # Writing is I/O: no CPU reserved, so writers never wait for the actors (which may hold every CPU).
        ds = ds.map_batches(_WriteShards(targets), batch_size=size, batch_format="numpy", num_cpus=0,
                            zero_copy_batch=True)
        by_name = {t.name: t for t in targets}
        for out in ds.iter_batches(batch_format="numpy", batch_size=None):
            for sink, rows_in, entry in zip(out["sink"], out["rows_in"], out["entry"]):
                target = by_name[sink]
                entry = json.loads(entry)
                target.store.commit(entry)
                record(report, target, entry)
                report.sinks[sink].rows_in += int(rows_in)
            bar.update(int(out["rows_in"][out["sink"] == targets[0].name].sum()))

    def _write_in_driver(self, ds: Any, targets: list[SinkTarget], report: RunReport, bar: Progress) -> None:
        size = min(t.step.node.batch_size or 4096 for t in targets)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=size):
            for target in targets:
                selected = target.select(batch)
                entry = target.store.write(selected, target.columns)
                target.store.commit(entry)
                record(report, target, entry)
                report.sinks[target.name].rows_in += batch_len(selected)
            bar.update(batch_len(batch))


def _configure_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False
    ctx.enable_tensor_extension_casting = True


def _read_key(source_name: str) -> str:
    """Where readers count rows read (as "rows") and skipped (as "errors") in the stats actor."""
    return f"<read:{source_name}>"


def _read(source: Source, skip: set[str], stats: Any, key: str) -> Any:
    """A dataset of the source's rows, one block per fragment; readers count into `stats` under `key`."""
    import ray
    from ray.data import TaskPoolStrategy

    fragments = source.fragments()
    skip_ref = ray.put(skip)
    if source.process_only_in_driver():
        refs = [ray.put([b for b in source.read_fragment(f)]) for f in fragments]
        reader = _ReadFragments(None, refs, skip_ref, stats, key)
    else:
        reader = _ReadFragments(source, fragments, skip_ref, stats, key)
    # Built in the driver: no read task needs a CPU that the actors may all hold.
    ds = ray.data.from_items([{"id": i} for i in range(len(fragments))], override_num_blocks=max(1, len(fragments)))
    # Reading is I/O and decoding: no CPU reserved, and a few readers at a time. The different resource
    # shape also keeps Ray Data from fusing the read into the next stage's actors, which would bundle all
    # fragments into one actor call.
    return ds.map_batches(reader, batch_size=1, batch_format="numpy", num_cpus=0, compute=TaskPoolStrategy(size=READERS))


class _ReadFragments:
    def __init__(self, source: Source | None, fragments: list[Any], skip_ref: Any, stats: Any, key: str) -> None:
        self.source = source
        self.fragments = fragments
        self.skip_ref = skip_ref
        self.stats = stats
        self.key = key

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[Batch]:
        import ray

        skip = ray.get(self.skip_ref)
        for index in batch["id"]:
            item = self.fragments[int(index)]
            batches = ray.get(item) if self.source is None else self.source.read_fragment(item)  # type: ignore[arg-type]
            for b in batches:
                n = batch_len(b)
                b = with_error_columns(drop_rows(b, skip))
                self.stats.add.remote(self.key, n, n - batch_len(b), 0.0)
                if batch_len(b):
                    yield b


def _map_stage(ds: Any, step: Step, stats: Any, pools: list[Node]) -> Any:
    node = step.node
    res = node.resources
    common: dict[str, Any] = {"batch_size": node.batch_size, "batch_format": "numpy", "num_cpus": res.cpus}
    if res.gpus:
        common["num_gpus"] = res.gpus
    if res.memory:
        common["memory"] = res.memory
    if node.stateful:
        from ray.data import ActorPoolStrategy

        size = node.concurrency or _default_pool(node, pools)
        low, high = size if isinstance(size, tuple) else (size, size)
        # The node travels in the class itself, not as constructor arguments in the object store.
        actor_cls = type(f"{type(node).__name__}Actor", (_ActorRunner,), {"node": node, "name": step.name, "stats": stats})
        return ds.map_batches(actor_cls, compute=ActorPoolStrategy(min_size=low, max_size=high), **common)
    if node.concurrency is not None:
        from ray.data import TaskPoolStrategy

        size = node.concurrency if isinstance(node.concurrency, int) else node.concurrency[1]
        common["compute"] = TaskPoolStrategy(size=size)
    return ds.map_batches(_TaskRunner(node, step.name, stats), **common)


def _default_pool(node: Node, pools: list[Node]) -> int:
    """A fixed pool sized to this node's share of the cluster. The stateful nodes of a pipeline split the
    CPUs (and GPUs) in proportion to what one worker of each asks for; an autoscaling pool that starts at
    one actor rarely grows on a small cluster before a short job ends, while a fixed pool starts at once."""
    import ray

    total = ray.cluster_resources()
    limits = []
    for key, attr in (("CPU", "cpus"), ("GPU", "gpus")):
        need = getattr(node.resources, attr)
        demand = sum(getattr(p.resources, attr) for p in pools)
        if need > 0 and demand > 0:
            limits.append(int(total.get(key, 0) / demand))
    return max(1, min(limits, default=1))


def _set_threads(cpus: float) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, int(cpus)))


class _ActorRunner:
    """A stateful node in an actor: set up once, then one call per batch. Subclassed per node."""

    node: Node
    name: str
    stats: Any

    def __init__(self) -> None:
        _set_threads(self.node.resources.cpus)
        self.runner = NodeRunner(self.node, self.name)
        self.runner.setup()

    def __call__(self, batch: Batch) -> Batch:
        before = NodeStats(**vars(self.runner.stats))
        out = self.runner(batch)
        s = self.runner.stats
        self.stats.add.remote(self.runner.name, s.rows - before.rows, s.errors - before.errors, s.seconds - before.seconds)
        return out

    def __del__(self) -> None:
        try:
            self.runner.teardown()
        except Exception:  # teardown at interpreter exit must not raise
            pass


class _TaskRunner:
    def __init__(self, node: Node, name: str, stats: Any) -> None:
        self.node = node
        self.name = name
        self.stats = stats

    def __call__(self, batch: Batch) -> Batch:
        runner = NodeRunner(self.node, self.name)
        out = runner(batch)
        s = runner.stats
        self.stats.add.remote(self.name, s.rows, s.errors, s.seconds)
        return out


class _WriteShards:
    """The last stage: write each batch as a shard of every sink; return the manifest entries."""

    def __init__(self, targets: list[SinkTarget]) -> None:
        self.targets = targets

    def __call__(self, batch: Batch) -> Batch:
        sinks, rows_in, entries = [], [], []
        for t in self.targets:
            selected = t.select(batch)
            entry = t.store.write(selected, t.columns)
            sinks.append(t.name)
            rows_in.append(batch_len(selected))
            entries.append(entry)
        return {"sink": np.array(sinks), "rows_in": np.array(rows_in), "entry": np.array([json.dumps(e) for e in entries])}


def _remote(cls: type) -> Any:
    import ray

    return ray.remote(cls)


class _StatsBase:
    def __init__(self) -> None:
        self.stats: dict[str, dict[str, float]] = {}

    def reset(self) -> None:
        self.stats = {}

    def add(self, name: str, rows: int, errors: int, seconds: float) -> None:
        s = self.stats.setdefault(name, {"rows": 0, "errors": 0, "seconds": 0.0})
        s["rows"] += rows
        s["errors"] += errors
        s["seconds"] += seconds

    def get(self) -> dict[str, dict[str, float]]:
        return self.stats


_StatsActor = _remote(_StatsBase)

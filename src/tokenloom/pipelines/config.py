"""Pipelines from YAML (omegaconf), with ``key=value`` overrides.

    name: caption-lengths
    imports: [mypackage.nodes]          # modules whose import registers node types; the caller must allow them
    source:                              # or `sources:` mapping name -> node
      type: io/read_parquet
      path: data/*.parquet
    nodes:                               # name -> node; `inputs` names other nodes
      count:
        type: example/count_chars
        inputs: [source]
        column: caption
    sink:                                # or `sinks:` mapping name -> node
      type: io/write_parquet
      input: count
      path: out/

Override any key on the command line: ``tokenloom run pipeline.yaml sink.path=out2/ nodes.count.batch_size=64``.
A YAML file names node types by registry key only; it never imports a module the user did not allow
(``allow_modules=`` here, ``--allow-module`` on the command line). Installed plug-ins register through
entry points and need no allowance.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from tokenloom.nodes.base import Node
from tokenloom.pipelines.graph import Pipeline, PipelineError
from tokenloom.registry import NODES

_RESERVED = {"type", "inputs", "input"}
_TOP_LEVEL = {"name", "executor", "imports", "vars", "source", "sources", "nodes", "sink", "sinks", "resume"}


def load_config(config: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML file (or take a mapping), apply ``key=value`` overrides, return plain containers."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(os.fspath(config)) if isinstance(config, (str, os.PathLike)) else OmegaConf.create(dict(config))
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    data = OmegaConf.to_container(merged, resolve=True)
    if not isinstance(data, dict):
        raise ValueError(f"pipeline config {config!s} must be a mapping at its top level")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ValueError(f"pipeline config: unknown top-level key(s) {unknown}; known keys: {sorted(_TOP_LEVEL)}")
    return data


def pipeline_from_config(
    config: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] = (), allow_modules: Iterable[str] = ()
) -> Pipeline:
    """Build a Pipeline from a YAML file or mapping. Raises PipelineError listing every problem."""
    data = load_config(config, overrides)
    _import_allowed(data.get("imports") or [], set(allow_modules))
    pipeline = Pipeline(str(data.get("name", "pipeline")))
    problems: list[str] = []
    sections = [
        ("source", "sources", pipeline.source),
        ("nodes", "nodes", pipeline.add),
        ("sink", "sinks", pipeline.sink),
    ]
    for single, plural, add in sections:
        for name, spec in _section(data, single, plural).items():
            node = _make_node(name, spec, problems)
            if node is None:
                continue
            inputs = _inputs(name, spec, problems)
            try:
                if plural == "sources":
                    add(node, name=name)
                elif plural == "sinks":
                    if len(inputs) != 1:
                        problems.append(f"node {name!r}: a sink takes exactly one 'input', got {inputs}")
                        continue
                    add(node, inputs[0], name=name)
                else:
                    add(node, *inputs, name=name)
            except (TypeError, ValueError) as exc:
                problems.append(f"node {name!r}: {exc}")
    if problems:
        raise PipelineError(pipeline.name, problems)
    return pipeline


def _section(data: dict[str, Any], single: str, plural: str) -> dict[str, Any]:
    if single == "nodes":
        return dict(data.get("nodes") or {})
    out = dict(data.get(plural) or {})
    if data.get(single) is not None:
        out[single] = data[single]
    return out


def _make_node(name: str, spec: Any, problems: list[str]) -> Node | None:
    if not isinstance(spec, dict) or "type" not in spec:
        problems.append(f"node {name!r}: field 'type' is missing; give a registry key such as 'io/read_parquet'")
        return None
    try:
        cls = NODES.get(spec["type"])
    except KeyError as exc:
        problems.append(f"node {name!r}: field 'type': {exc.args[0]}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: v for k, v in spec.items() if k not in _RESERVED}
    for key in kwargs:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"node {name!r}: {cls.__name__} has no field {key!r}{hint}; fields: {sorted(fields)}")
    missing = [f for f, fd in fields.items() if f not in kwargs and fd.default is dataclasses.MISSING
               and fd.default_factory is dataclasses.MISSING]
    for key in missing:
        problems.append(f"node {name!r}: field {key!r} of {cls.__name__} is required")
    if any(k not in fields for k in kwargs) or missing:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"node {name!r}: {exc}")
        return None


def _inputs(name: str, spec: dict[str, Any], problems: list[str]) -> list[str]:
    value = spec.get("inputs", spec.get("input", []))
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"node {name!r}: field 'inputs' must be a node name or a list of names, got {value!r}")
        return []
    return value


def _import_allowed(modules: list[str], allowed: set[str]) -> None:
    for module in modules:
        if not any(module == a or module.startswith(a + ".") for a in allowed):
            raise PermissionError(
                f"pipeline config asks to import {module!r}, which the caller did not allow; "
                f"pass --allow-module {module} (or allow_modules=[{module!r}]) if you trust it"
            )
        importlib.import_module(module)

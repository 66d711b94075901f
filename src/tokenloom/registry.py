"""Registries: "<modality>/<name>" -> class.

    NODES = Registry("nodes")

    @NODES.register("io/read_parquet")
    class ReadParquet(Node): ...

    NODES.get("io/read_parquet")      # -> ReadParquet
    NODES.get("io/read_parquett")     # KeyError naming the known keys and the closest match

Third-party packages plug in through the entry-point group ``tokenloom.<registry name>``
(e.g. ``tokenloom.nodes``); each entry point names a module, or an object, whose import registers
its classes. Entry points are loaded on the first miss, never at import time.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry:
    """A named mapping from registry keys to classes (or factories)."""

    def __init__(self, name: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.name = name
        self.builtin_modules = builtin_modules
        self._entries: dict[str, Any] = {}
        self._entry_points_loaded = False

    def register(self, key: str, obj: Any = None) -> Callable[[T], T] | Any:
        """Register ``obj`` under ``key``; usable as a decorator. A duplicate key raises."""
        if "/" not in key or key.startswith("/") or key.endswith("/"):
            raise ValueError(f"{self.name} registry key {key!r} must look like '<modality>/<name>'")

        def _add(target: T) -> T:
            existing = self._entries.get(key)
            if existing is not None and existing is not target:
                raise KeyError(
                    f"{self.name} registry key {key!r} is already taken by "
                    f"{_qualname(existing)}; pick another key for {_qualname(target)}"
                )
            self._entries[key] = target
            try:
                target.registry_key = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return target

        return _add(obj) if obj is not None else _add

    def get(self, key: str) -> Any:
        for module in self.builtin_modules:  # import tokenloom's own modules one by one, until the key appears
            if key in self._entries:
                break
            importlib.import_module(module)
        if key not in self._entries and not self._entry_points_loaded:
            self._load_entry_points()
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(self._miss_message(key)) from None

    def __contains__(self, key: str) -> bool:
        if key not in self._entries and not self._entry_points_loaded:
            self._load_entry_points()
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def keys(self) -> list[str]:
        if not self._entry_points_loaded:
            self._load_entry_points()
        return sorted(self._entries)

    def _miss_message(self, key: str) -> str:
        known = self.keys()
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.name} key {key!r}.{hint} Known keys: {', '.join(known) or '(none)'}"

    def _load_entry_points(self) -> None:
        self._entry_points_loaded = True
        for module in self.builtin_modules:  # tokenloom's own, imported on first need to keep imports light
            importlib.import_module(module)
        for ep in importlib.metadata.entry_points(group=f"tokenloom.{self.name}"):
            try:
                ep.load()
            except Exception as exc:  # a broken plug-in must not break the registry
                logger.warning("tokenloom plug-in %s (%s) failed to load: %s", ep.name, ep.value, exc)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


NODES = Registry("nodes", builtin_modules=(
    "tokenloom.nodes.tokenize", "tokenloom.nodes.datasets", "tokenloom.nodes.metrics", "tokenloom.nodes.decode",
    "tokenloom.nodes.shapes", "tokenloom.nodes.generate",
))
TOKENIZERS = Registry("tokenizers", builtin_modules=(
    "tokenloom.tokenizers.quantizers",
    "tokenloom.tokenizers.image_vq",
    "tokenloom.tokenizers.image_multiscale",
    "tokenloom.tokenizers.audio_mulaw",
    "tokenloom.tokenizers.audio_codec",
    "tokenloom.tokenizers.timeseries_bins",
    "tokenloom.tokenizers.timeseries_patch",
    "tokenloom.tokenizers.actions_bins",
    "tokenloom.tokenizers.actions_fast",
    "tokenloom.tokenizers.octree",
    "tokenloom.tokenizers.text_bytes",
    "tokenloom.tokenizers.image_jpeg",
    "tokenloom.tokenizers.video",
    "tokenloom.tokenizers.video_causal3d",
    "tokenloom.tokenizers.published_var",
    "tokenloom.tokenizers.published_llamagen",
))

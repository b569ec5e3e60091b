"""One registry shape for plug-ins, backends and export formats (timm's ``register_model``, pytest's entry points).

A registry maps a name to a class. Entries come from a decorator (``@REGISTRY.register``) on the
built-ins and from an entry-point group that other installed packages declare
(``[project.entry-points."wherevit.backends"] mine = "pkg.module:MyBackend"``), loaded on first
use. A duplicate name is refused, wherever it comes from; an entry point whose module cannot be
imported here (its optional library is missing) is left out and its reason kept for error messages.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Generic, TypeVar

from wherevit.base.errors import WherevitError

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T", bound=type)


class RegistryError(WherevitError, ValueError):
    """A duplicate or malformed registration, or an entry point that does not register what it names."""


class Registry(Generic[T]):
    """Classes by ``name``: the built-ins, then those of installed packages' entry points."""

    def __init__(self, kind: str, group: str, error: type[Exception] = RegistryError) -> None:
        self.kind, self.group, self.error = kind, group, error
        self.base: type | None = None  # set once the interface class exists: registrations must subclass it
        self._entries: dict[str, T] = {}
        self._unloadable: dict[str, str] = {}
        self._entry_points_loaded = False

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available by its ``name``; a second class under one name is refused."""
        name = getattr(cls, "name", None)
        if not name:
            raise self.error(f"{getattr(cls, '__name__', cls)!r} needs a class attribute 'name' to be registered as a {self.kind}")
        if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise self.error(f"{cls!r} is not a {self.base.__name__} subclass")
        other = self._entries.get(name)
        if other is not None and other is not cls:
            raise self.error(f"{self.kind} name {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        self._entries[name] = cls
        return cls

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()  # a class, or a module that registers itself on import
            except ImportError as e:  # only this entry is off; its reason shows where it is asked for
                self._unloadable[ep.name] = f"{self.kind} {ep.name!r} ({ep.value}) cannot be imported here: {e}"
                continue
            if isinstance(obj, type):
                if getattr(obj, "name", None) != ep.name:
                    raise self.error(f"entry point {ep.name!r} ({ep.value}) loads a {self.kind} named {getattr(obj, 'name', None)!r}")
                self.register(obj)
            elif ep.name not in self._entries:
                raise self.error(f"entry point {ep.name!r} ({ep.value}) registered no {self.kind} of that name")
        self._entry_points_loaded = True  # only once all loaded: a clash is reported on every call, not just the first

    def items(self) -> dict[str, T]:
        """Every registered class by name (entry points loaded on first use)."""
        self._load_entry_points()
        return dict(self._entries)

    def get(self, name: str) -> T:
        """The class registered as ``name``; an unknown name lists the known ones (and why an entry point is off)."""
        entries = self.items()
        if name not in entries:
            why = f"; {self._unloadable[name]}" if name in self._unloadable else ""
            raise self.error(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(entries))}{why}")
        return entries[name]

    def unloadable(self) -> dict[str, str]:
        """Entry points that could not be imported here, with the reason."""
        self._load_entry_points()
        return dict(self._unloadable)

    # -- for tests: undo what a test registered ------------------------------------------------
    def snapshot(self) -> tuple[dict[str, T], dict[str, str], bool]:
        return dict(self._entries), dict(self._unloadable), self._entry_points_loaded

    def restore(self, snap: tuple[dict[str, T], dict[str, str], bool]) -> None:
        self._entries, self._unloadable, self._entry_points_loaded = dict(snap[0]), dict(snap[1]), snap[2]

    def reload_entry_points(self) -> None:
        """Read the entry-point group again on next use (a test installed a distribution)."""
        self._entry_points_loaded = False

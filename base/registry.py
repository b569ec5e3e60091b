"""One registry shape for every extension point (timm's ``register_model``, pytest's entry points).

A registry maps a name to a class: plug-ins, backends, export formats, head tasks. Entries come
from a decorator (``@REGISTRY.register``) on the built-ins and from an entry-point group that other
installed packages declare (``[project.entry-points."wherevit.backends"] mine = "pkg.module:MyBackend"``).

Entry points are loaded lazily and by name: ``get("torch-eager")`` imports only the module that
entry point names, so a backend that needs torch can be an entry point without every
``runtime.load`` importing torch; ``names()`` lists every name without importing anything;
``items()`` loads them all (for listing and ``auto`` ranking). A duplicate name is refused,
wherever it comes from; an entry point whose module cannot be imported here (its optional library
is missing) is left out and its reason kept for error messages.

Every lookup goes through ``get``, so an unknown name always reads the same way:
``unknown backend 'x'; registered backends: ort-cpu, ort-cuda, ...``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from wherevit.base.errors import WherevitError

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T", bound=type)


class RegistryError(WherevitError, ValueError):
    """An unknown name, a duplicate or malformed registration, or an entry point that does not register what it names."""


class Registry(Generic[T]):
    """Classes by ``name``: the built-ins, then those of installed packages' entry points."""

    def __init__(self, kind: str, group: str, error: type[Exception] = RegistryError) -> None:
        self.kind, self.group, self.error = kind, group, error
        self.base: type | None = None  # set once the interface class exists: registrations must subclass it
        self._entries: dict[str, T] = {}
        self._unloadable: dict[str, str] = {}
        self._tried: set[str] = set()  # entry-point names already loaded (or found unloadable)
        self._entry_points_loaded = False  # every entry point of the group tried

    # -- registering -------------------------------------------------------------------------
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

    # -- entry points ------------------------------------------------------------------------
    def _group(self) -> list[EntryPoint]:
        return list(entry_points(group=self.group))

    def _load(self, ep: EntryPoint) -> None:
        """Import one entry point and register what it names (a class, or a module that registers itself)."""
        self._tried.add(ep.name)
        try:
            obj = ep.load()
        except ImportError as e:  # only this entry is off; its reason shows where it is asked for
            self._unloadable[ep.name] = f"{self.kind} {ep.name!r} ({ep.value}) cannot be imported here: {e}"
            return
        if isinstance(obj, type):
            if getattr(obj, "name", None) != ep.name:
                raise self.error(f"entry point {ep.name!r} ({ep.value}) loads a {self.kind} named {getattr(obj, 'name', None)!r}")
            self.register(obj)
        elif ep.name not in self._entries:
            raise self.error(f"entry point {ep.name!r} ({ep.value}) registered no {self.kind} of that name")

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        for ep in self._group():
            if ep.name not in self._tried:
                self._load(ep)
        self._entry_points_loaded = True  # only once all loaded: a clash is reported on every call, not just the first

    # -- looking up --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, entry points included, without importing any entry point."""
        return sorted(set(self._entries) | ({ep.name for ep in self._group()} - set(self._unloadable)))

    def items(self) -> dict[str, T]:
        """Every registered class by name (imports every entry point of the group once)."""
        self._load_entry_points()
        return dict(self._entries)

    def get(self, name: str, label: str | None = None) -> T:
        """The class registered as ``name``, importing at most the one entry point of that name.

        An unknown name raises ``self.error`` naming the registered ones (and why an entry point of
        that name is off); ``label`` is how the name is shown (``plugins.nope`` for a config key)."""
        if name in self._entries:
            return self._entries[name]
        if name not in self._tried:
            for ep in self._group():
                if ep.name == name:
                    self._load(ep)
                    break
        if name in self._entries:
            return self._entries[name]
        why = f"; {self._unloadable[name]}" if name in self._unloadable else ""
        raise self.error(f"unknown {self.kind} {label or name!r}; registered {self.kind}s: {', '.join(self.names())}{why}")

    def unloadable(self) -> dict[str, str]:
        """Entry points that could not be imported here, with the reason."""
        self._load_entry_points()
        return dict(self._unloadable)

    # -- for tests: undo what a test registered ------------------------------------------------
    def snapshot(self) -> tuple[dict[str, T], dict[str, str], bool, set[str]]:
        return dict(self._entries), dict(self._unloadable), self._entry_points_loaded, set(self._tried)

    def restore(self, snap: tuple) -> None:
        self._entries, self._unloadable, self._entry_points_loaded = dict(snap[0]), dict(snap[1]), snap[2]
        self._tried = set(snap[3]) if len(snap) > 3 else set()

    def reload_entry_points(self) -> None:
        """Read the entry-point group again on next use (a test installed a distribution)."""
        self._entry_points_loaded = False
        self._tried.clear()
        self._unloadable.clear()

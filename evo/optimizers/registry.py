"""Optimizers and operators by name: ``evo.optimizers.get("gepa", budget=...)``, and the hooks a
user registers their own with."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from evo.errors import ConfigError

if TYPE_CHECKING:
    from evo.search.engine import Candidate, Search, SearchConfig
    from evo.search.genome import Genome

    Operator = Callable[[Candidate, Search], Genome | None]

_OPTIMIZERS: dict[str, type[SearchConfig]] = {}
_OPERATORS: dict[str, Operator] = {}
T = TypeVar("T")


def register_optimizer(cls: T) -> T:
    """Class decorator: make an optimizer (a :class:`~evo.search.engine.SearchConfig` subclass
    with a ``name`` class attribute and a ``run(search)`` method) available by name, to
    :func:`get` and ``evo run --optimizer NAME``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls!r} needs a class attribute 'name' to be registered")
    _OPTIMIZERS[name] = cls  # type: ignore[assignment]
    return cls


def register_operator(name: str) -> Callable[[Operator], Operator]:
    """Decorator: a variation operator ``(parent, search) -> genome | None`` usable by name in
    ``Evolution(operators={name: probability})``. Return None to skip (nothing is paid)."""
    def deco(fn: Operator) -> Operator:
        _OPERATORS[name] = fn
        return fn
    return deco


def operator(name: str) -> Operator:
    try:
        return _OPERATORS[name]
    except KeyError:
        raise ConfigError(f"no operator named {name!r}; registered: {sorted(_OPERATORS)}") from None


def names() -> list[str]:
    """Registered optimizer names."""
    return sorted(_OPTIMIZERS)


def optimizer_class(name: str) -> type[SearchConfig]:
    key = name.lower().replace("-", "_")
    aliases = {cls.__name__.lower(): n for n, cls in _OPTIMIZERS.items()}
    key = aliases.get(key, key)
    if key not in _OPTIMIZERS:
        raise ConfigError(f"no optimizer named {name!r}; choose one of: {', '.join(names())}")
    return _OPTIMIZERS[key]


def get(name: str, **params: Any) -> SearchConfig:
    """An optimizer by name (``"gepa"``, ``"miprov2"``, ``"MIPROv2"`` …) with its parameters."""
    return optimizer_class(name)(**params)


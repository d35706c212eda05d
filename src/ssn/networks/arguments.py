"""Checks of a network's keyword arguments against its signature, before it is built."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["check_keywords"]


def check_keywords(what: str, factory: Callable, kwargs: dict, reserved: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` if ``factory`` cannot take ``kwargs`` (named by the caller as ``what``)."""
    for key in reserved:
        if key in kwargs:
            raise ConfigError(f"{what}: {key!r} is set by ssn from the data; remove it from the model arguments")
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        others = [n for n in accepted if n not in reserved]
        raise ConfigError(
            f"{what} takes no argument {', '.join(map(repr, unknown))}; it takes: {', '.join(others) or 'none'}"
        )

"""Units of work: the rows that stand or fall together when the database refuses one of them.

A unit is one piece of outside work: an HTTP request, a webhook, a timer firing, one delivery
attempt, one tag value evaluated. It lives in a context variable, so it follows the work through
``await``, ``asyncio.wait_for`` and tasks the work starts, and it never leaks into unrelated work
that happens to run in the same long-lived task: each entry point opens a fresh unit.

When the database refuses a row (a value nothing checked first), the store refuses every row of
the unit that queued it, and only those: the work beside it in the same group commit is stored.
The refused unit's ``commit()`` raises, its after-commit callbacks never run, and rows it queues
later are dropped, so nothing acts on a change that was never stored.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Unit:
    """One piece of work whose rows are stored, or refused, together."""

    __slots__ = ("__weakref__", "name", "refused")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.refused: BaseException | None = None  # why the database refused its rows

    def refuse(self, exc: BaseException) -> None:
        if self.refused is None:
            self.refused = exc

    def __repr__(self) -> str:
        return f"<Unit {self.name or hex(id(self))}{' refused' if self.refused else ''}>"


_CURRENT: contextvars.ContextVar[Unit | None] = contextvars.ContextVar("annunciator_unit", default=None)


def current() -> Unit | None:
    """The unit of the work running now, or None outside any."""
    return _CURRENT.get()


@contextmanager
def fresh(name: str = "") -> Iterator[Unit]:
    """Run the block as a unit of its own (nested blocks get their own too)."""
    unit = Unit(name)
    token = _CURRENT.set(unit)
    try:
        yield unit
    finally:
        _CURRENT.reset(token)


@contextmanager
def joined(name: str = "") -> Iterator[Unit]:
    """Run the block in the current unit, or in a fresh one outside any."""
    unit = _CURRENT.get()
    if unit is not None:
        yield unit
        return
    with fresh(name) as unit:
        yield unit


def entry(name: str) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate a coroutine function that starts a piece of work: each call is a fresh unit."""

    def wrap(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with fresh(name):
                return await fn(*args, **kwargs)

        return run

    return wrap


def outside() -> contextvars.Context:
    """A context with no unit, for callbacks and tasks that must not inherit their scheduler's."""
    ctx = contextvars.copy_context()
    ctx.run(_CURRENT.set, None)
    return ctx


def run_outside(fn: Callable[..., T], *args: Any) -> T:
    return outside().run(fn, *args)

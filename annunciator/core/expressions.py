"""Pipeline expressions, evaluated in Jinja2's sandbox: integrators write them, so no ``eval``.

The language is Jinja's expression syntax: ``priority >= "High" and eventValue > 10``,
``numCalls|default(0) + 1``, ``displayPath.startswith("plant/")``. Unknown names are errors,
not silently empty, so a typo shows up in the trace instead of routing alarms the wrong way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class ExpressionError(ValueError):
    """An expression that does not compile, or failed while evaluating."""


class Expression:
    """A compiled expression; call it with the names it may read."""

    __slots__ = ("_compiled", "source")

    def __init__(self, source: str):
        self.source = source
        try:
            self._compiled = _env.compile_expression(str(source), undefined_to_none=False)
        except TemplateError as exc:
            raise ExpressionError(f"invalid expression {source!r}: {exc}") from None

    def __call__(self, values: dict[str, Any]) -> Any:
        try:
            result = self._compiled(**values)
        except TemplateError as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError) as exc:
            raise ExpressionError(f"{self.source!r}: {type(exc).__name__}: {exc}") from None
        if isinstance(result, StrictUndefined):
            raise ExpressionError(f"{self.source!r}: undefined")
        return result

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Expression:
    return Expression(source)


def check_expression(value: Any) -> str:
    """A pydantic validator: the text must compile now, not fail at 3 a.m."""
    compile_expression(str(value))
    return str(value)

"""annunciator: an alarm notification gateway and plugin framework."""

from .core.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0.dev0"

"""Timers on APScheduler's asyncio scheduler.

Pipeline waits are not kept in APScheduler's own job store: the wake-up time is a column of the
pipeline instance, written in the same transaction as the instance's state, and the timers are
rebuilt from the store at start. A separate job store could disagree with the instance after a
crash (a job with no instance, or an instance with no job); one row cannot.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import units

log = logging.getLogger(__name__)


class Timers:
    """Named one-shot timers; a late timer (after a restart) fires at once."""

    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def at(self, key: str, when: datetime, fn: Callable[..., Awaitable[Any] | Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop at ``when``; replaces a timer with the same key."""
        target = fn

        # APScheduler hands plain functions to a worker thread; everything here belongs to the
        # loop. A timer firing is a unit of work of its own (not that of whoever set it).
        async def on_loop(*a: Any) -> None:
            with units.fresh(f"timer {key}"):
                result = target(*a)
                if inspect.isawaitable(result):
                    await result

        self.scheduler.add_job(on_loop, "date", run_date=when, args=args, id=key, replace_existing=True)

    def cancel(self, key: str) -> bool:
        try:
            self.scheduler.remove_job(key)
            return True
        except JobLookupError:
            return False

    def pending(self) -> int:
        return len(self.scheduler.get_jobs())

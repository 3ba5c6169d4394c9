"""Periodic work inside each server process (relay resync, outbox delivery, stall watchdog).

Started by the app factory in the process that serves requests (after gunicorn forks, since
the app is not preloaded). Under gevent, threads are greenlets. Each task runs in its own
loop and survives its own exceptions; a task that needs cluster-wide exclusivity (claiming
outbox rows) takes it from the database, not from here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("gateway.background")


@dataclass
class Task:
    name: str
    interval: float
    fn: Callable[[], object]
    wake: threading.Event | None = None  # set it to run the task now instead of at the interval


@dataclass
class Background:
    tasks: list[Task] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started_pid: int | None = None
    on_stop: list[Callable[[], object]] = field(default_factory=list)  # e.g. the relay's listener
    on_start: list[Callable[[], object]] = field(default_factory=list)  # e.g. the relay's listener, for the forwarding senders

    def every(
        self, seconds: float, name: str, *, wake: threading.Event | None = None
    ) -> Callable[[Callable[[], object]], Callable[[], object]]:
        """Decorator: run ``fn`` every ``seconds`` once started, and at once whenever ``wake`` is set."""

        def register(fn: Callable[[], object]) -> Callable[[], object]:
            self.tasks.append(Task(name, seconds, fn, wake))
            if self._started_pid == os.getpid():
                self._spawn(self.tasks[-1])
            return fn

        return register

    def start(self) -> None:
        """Start every task once per process (a forked child starts its own)."""
        if self._started_pid == os.getpid():
            return
        self._started_pid = os.getpid()
        self._stop.clear()
        for task in self.tasks:
            self._spawn(task)
        for fn in self.on_start:
            fn()

    @property
    def running(self) -> bool:
        """Started in this process and not stopped: a serving process, not a CLI or a test's app."""
        return self._started_pid == os.getpid() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        for fn in self.on_stop:
            fn()
        for task in self.tasks:
            if task.wake is not None:
                task.wake.set()

    def _spawn(self, task: Task) -> None:
        def pause() -> bool:
            """Wait for the interval (or the wake-up); True when the task should stop."""
            if task.wake is None:
                return self._stop.wait(task.interval)
            task.wake.wait(task.interval)
            task.wake.clear()
            return self._stop.is_set()

        def loop() -> None:
            while not pause():
                try:
                    task.fn()
                except Exception:  # a failing task logs and tries again next interval
                    log.exception("background task failed", extra={"task": task.name})

        threading.Thread(target=loop, name=f"gateway-{task.name}", daemon=True).start()

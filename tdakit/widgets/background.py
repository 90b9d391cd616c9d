"""Work off the UI thread: one worker per explorer, the newest request wins.

A click that starts slow work (retraining, refitting curvature) hands a job to ``Background.submit``. The
job runs on a daemon thread while the controls stay live. A request made while a job runs supersedes it:
the running job is asked to stop at its next ``checkpoint()`` and its result is dropped; only the newest
pending request runs next. Results and errors come back through callbacks on the worker thread (widget
state set from there is sent to the browser by ipywidgets). A ``TdakitError`` (a problem the user can fix) goes to
the job's ``failed`` callback and the explorer shows it as a message; any other exception is a bug: ``failed``
still hears of it (so the explorer can say that something broke), and then it surfaces -- raised to the caller
when the work runs on the caller's thread, its traceback printed to stderr from the worker thread.

``Background(threaded=False)`` runs every job at once on the caller's thread: what tests and headless use
do, with the same callbacks.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TdakitError


class Superseded(Exception):  # noqa: N818  (a signal, not a failure)
    """Raised inside a job at ``checkpoint()`` when a newer request has arrived."""


@dataclass
class Job:
    """One request: ``work(job)`` computes, ``done(result)`` shows, ``failed(error)`` reports a problem."""

    number: int
    work: Callable[[Job], Any]
    done: Callable[[Any], None]
    failed: Callable[[BaseException], None]
    owner: Background | None = None

    @property
    def superseded(self) -> bool:
        return self.owner is not None and self.owner.latest != self.number

    def checkpoint(self) -> None:
        """Call between pieces of work: raises ``Superseded`` when a newer request is waiting."""
        if self.superseded:
            raise Superseded


class Background:
    """A single worker thread with a one-slot queue (see the module docstring)."""

    def __init__(self, threaded: bool = True, on_busy: Callable[[bool], None] | None = None):
        self.threaded = threaded
        self.on_busy = on_busy or (lambda busy: None)
        self.latest = 0
        self.dropped = 0  # requests superseded before their result was shown
        self._lock = threading.Lock()
        self._pending: Job | None = None
        self._running = False  # a worker is draining the queue (changed under the lock only)
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, work: Callable[[Job], Any], done: Callable[[Any], None],
               failed: Callable[[BaseException], None]) -> Job:
        """Queue a job (superseding any running or waiting one) and return it."""
        with self._lock:
            self.latest += 1
            job = Job(self.latest, work, done, failed, self)
            if self._pending is not None:
                self.dropped += 1
            self._pending = job
            start = not self._running
            self._running = True
            self._idle.clear()
        if start and not self.threaded:
            self._drain()
        elif start:
            threading.Thread(target=self._drain, daemon=True, name="tdakit-explorer").start()
        return job

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is running or waiting (tests, headless calls); False on timeout."""
        return self._idle.wait(timeout)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def _drain(self) -> None:
        self.on_busy(True)
        try:
            while True:
                with self._lock:
                    job, self._pending = self._pending, None
                    if job is None:
                        self._running = False
                        break
                self._run(job)
        except BaseException:  # a bug raised to the caller (threaded=False): the worker is left idle, not stuck
            with self._lock:
                self._pending, self._running = None, False
            raise
        finally:
            with self._lock:
                idle = not self._running  # a request that came after the loop ended started its own worker
            if idle:
                self.on_busy(False)
                self._idle.set()

    def _run(self, job: Job) -> None:
        try:
            result = job.work(job)
        except Superseded:
            with self._lock:
                self.dropped += 1
            return
        except TdakitError as error:  # the user can fix it: shown in the widget, the explorer stays usable
            if not job.superseded:
                job.failed(error)
            return
        except Exception as error:  # a bug: reported, then surfaced (never passed off as a hint)
            if not job.superseded:
                job.failed(error)
            if not self.threaded:
                raise
            traceback.print_exception(error)
            return
        if job.superseded:
            with self._lock:
                self.dropped += 1
            return
        job.done(result)

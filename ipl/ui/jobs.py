"""Adaptations started from the page: one at a time, in a child process, first come first served.

Each job is a command line (`ipl adapt ...`, or `python -m ipl.ui.worker resume RUN`) run in its own process, so
Stop is the same as Ctrl-C / `kill PID` on the CLI: the run records status "interrupted" and keeps its last
checkpoint, and Resume continues it. A second job waits in the queue until the first has ended (the run folder's
own lock still refuses a second process in the same folder).
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

QUEUED, RUNNING, DONE, FAILED, STOPPED, CANCELLED = "queued", "running", "done", "failed", "stopped", "cancelled"
_ENDED = (DONE, FAILED, STOPPED, CANCELLED)


@dataclass
class Job:
    """One adaptation command and where it stands."""

    id: int
    argv: list[str]
    runs: list[Path]              # the run folders it writes
    log: Path                     # its stdout + stderr
    state: str = QUEUED
    returncode: Optional[int] = None
    stop_requested: bool = False
    submitted: float = field(default_factory=time.time)
    started: Optional[float] = None
    ended: Optional[float] = None
    process: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in _ENDED

    def output(self, limit: int = 200_000) -> str:
        """The tail of what the process printed (progress bars, the error message)."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def error_message(self) -> Optional[str]:
        """The `Error: ...` line the CLI prints for a user error (exit 2), if any."""
        lines = [ln.strip() for ln in self.output().replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("Error:")]
        if errors:
            return errors[-1]
        if self.state == FAILED and lines:
            return lines[-1]
        return None


class JobManager:
    """A FIFO queue of jobs and one worker thread that runs them one after the other."""

    def __init__(self, log_dir: Path, env: Optional[dict[str, str]] = None):
        self.log_dir = Path(log_dir)
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: dict[int, Job] = {}
        self._current: Optional[Job] = None
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    # ---------------------------------------------------------------------------------------------- queue
    def submit(self, argv: Sequence[str], runs: Sequence[Path] = ()) -> Job:
        """Queue a command; it runs when every job submitted before it has ended."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._cv:
            if self._closed:
                raise RuntimeError("the job manager is shut down")
            job_id = next(self._ids)
            job = Job(id=job_id, argv=[str(a) for a in argv], runs=[Path(r) for r in runs],
                      log=self.log_dir / f"job_{job_id:04d}.log")
            self._jobs[job.id] = job
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ipl-ui-jobs", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return job

    def get(self, job_id: Optional[int]) -> Optional[Job]:
        with self._cv:
            return self._jobs.get(job_id) if job_id is not None else None

    def current(self) -> Optional[Job]:
        """The running job, if any."""
        with self._cv:
            return self._current

    def position(self, job: Job) -> int:
        """0 when running or ended, else how many jobs run or wait before it."""
        with self._cv:
            if job.state != QUEUED:
                return 0
            ahead = list(self._queue).index(job) if job in self._queue else 0
            return ahead + (1 if self._current is not None else 0)

    def busy_with(self, run: Path) -> bool:
        """True if a queued or running job writes the run folder `run`."""
        run = Path(run).resolve()
        with self._cv:
            jobs = list(self._queue) + ([self._current] if self._current else [])
        return any(run == r.resolve() for j in jobs for r in j.runs)

    def stop(self, job: Job) -> bool:
        """Stop a job: a queued one is dropped, a running one gets SIGTERM (the run records `interrupted` and
        keeps its checkpoint). False if it had already ended."""
        with self._cv:
            if job.finished:
                return False
            job.stop_requested = True
            if job.state == QUEUED:
                if job in self._queue:
                    self._queue.remove(job)
                job.state, job.ended = CANCELLED, time.time()
                self._cv.notify_all()
                return True
            proc = job.process
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        return True

    def wait(self, job: Job, timeout: Optional[float] = None) -> bool:
        """Block until `job` has ended (True) or `timeout` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not job.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(timeout=left if left is not None else 1.0)
        return True

    def shutdown(self, timeout: float = 60.0) -> None:
        """Drop queued jobs, stop the running one and wait for it (its run records `interrupted`)."""
        with self._cv:
            self._closed = True
            queued = list(self._queue)
            current = self._current
        for job in queued:
            self.stop(job)
        if current is not None:
            self.stop(current)
            if not self.wait(current, timeout) and current.process is not None:
                current.process.kill()

    # ---------------------------------------------------------------------------------------------- worker
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait(timeout=1.0)
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._current = job
                job.state, job.started = RUNNING, time.time()
            try:
                with open(job.log, "wb") as out:
                    # A session of its own: Ctrl-C in the terminal of `ipl ui` reaches the page's process,
                    # which then stops the job itself (shutdown) instead of both racing.
                    proc = subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                    with self._cv:
                        job.process = proc
                        stop_now = job.stop_requested
                    if stop_now:
                        proc.send_signal(signal.SIGTERM)
                    code = proc.wait()
            except OSError as e:
                with open(job.log, "a", encoding="utf-8") as out:
                    out.write(f"Error: could not start {job.argv[0]}: {e}\n")
                code = -1
            with self._cv:
                job.returncode = code
                job.state = STOPPED if job.stop_requested else (DONE if code == 0 else FAILED)
                job.ended = time.time()
                self._current = None
                self._cv.notify_all()

"""The worker pool: process workers with capped memory and hard chunk timeouts.

concurrent.futures cannot cancel a running call, and one SIGKILLed worker
breaks a ProcessPoolExecutor for good; so the supervision is written here. Each
worker is a process from the forkserver (fast to replace; nothing native is
created before the fork) that caps its address space, runs an initializer once
and then takes chunks over a pipe. The event loop watches every worker's pipe
and process sentinel:

- a chunk over its time is failed with ChunkTimeout, its worker SIGKILLed at
  once and replaced; chunks on other workers carry on;
- a worker that dies mid-chunk costs only that chunk, which is retried once on
  a fresh worker, then failed with WorkerDied;
- a MemoryError under the cap fails the chunk with ChunkMemoryError, and the
  worker is replaced.

Large arrays travel through shared memory (``share``), not pickled copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import itertools
import logging
import mmap
import multiprocessing as mp
import os
import resource
import signal
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np

from gatewayd.errors import GatewayError, WorkerError
from gatewayd.forkserver import WORKER_ENV

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkFailed",
    "ChunkMemoryError",
    "ChunkTimeout",
    "PoolStats",
    "SharedArray",
    "WorkerDied",
    "WorkerPool",
    "stop_helper_processes",
]

_SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
_SHM_PREFIX = "gatewayd-"


class ChunkTimeout(WorkerError):
    reason = "timeout"


class WorkerDied(WorkerError):
    reason = "worker_died"


class ChunkMemoryError(WorkerError):
    reason = "memory"


class ChunkFailed(WorkerError):
    """The handler raised; ``reason`` is the GatewayError's code, or "error"."""

    reason = "error"


# ---- shared arrays ----

_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class SharedArray:
    """An array in a file under /dev/shm: only its name crosses the pipe."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def create(cls, array: np.ndarray) -> SharedArray:
        path = _SHM_DIR / f"{_SHM_PREFIX}{os.getpid()}-{next(_counter)}"
        data = np.ascontiguousarray(array)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(data.nbytes, 1))
            with mmap.mmap(fd, max(data.nbytes, 1)) as m:
                m[: data.nbytes] = data.tobytes()
        finally:
            os.close(fd)
        return cls(str(path), tuple(data.shape), data.dtype.str)

    def array(self) -> np.ndarray:
        """A writable view on the shared data, mapped in this process."""
        cached = _mapped.get(self.path)
        if cached is not None:
            return cached
        fd = os.open(self.path, os.O_RDWR)
        try:
            size = max(int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize, 1)
            m = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        view = np.frombuffer(m, dtype=self.dtype, count=int(np.prod(self.shape)))
        view = view.reshape(self.shape)
        # A process keeps its last few mappings: a frame's blocks share one.
        if len(_mapped) >= 4:
            _mapped.pop(next(iter(_mapped)))
        _mapped[self.path] = view
        return view

    def release(self) -> None:
        _mapped.pop(self.path, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


_mapped: dict[str, np.ndarray] = {}


def remove_stale_shared() -> int:
    """Deletes shared arrays left behind by gatewayd processes that are gone."""
    removed = 0
    for path in _SHM_DIR.glob(f"{_SHM_PREFIX}*"):
        pid = path.name[len(_SHM_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


# ---- the worker process ----

def _resolve(dotted: str) -> Callable[..., Any]:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _worker_main(tasks: Connection, conn: Connection, handler: str, init: str | None,
                 init_args: tuple[Any, ...], memory_limit_mb: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    limit = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        handle = _resolve(handler)
        if init:
            _resolve(init)(*init_args)
    except BaseException as exc:
        conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        chunk_id, payload = message
        try:
            result = handle(payload)
        except MemoryError:
            conn.send(("memory", chunk_id, "out of memory under the worker's cap", True))
            return  # a fragmented heap is not worth keeping
        except GatewayError as exc:
            conn.send(("failed", chunk_id, exc.reason, f"{type(exc).__name__}: {exc}"))
            continue
        except OSError as exc:
            if exc.errno == errno.ENOMEM:
                # An mmap over the cap (a shared frame too large, say): the
                # heap is whole, so this worker goes on.
                conn.send(("memory", chunk_id, f"out of address space under the worker's "
                                               f"cap: {exc.strerror}", False))
                continue
            conn.send(("failed", chunk_id, "error", f"{type(exc).__name__}: {exc}"))
            continue
        except Exception as exc:
            conn.send(("failed", chunk_id, "error", f"{type(exc).__name__}: {exc}"))
            continue
        try:
            conn.send(("ok", chunk_id, result))
        except MemoryError:
            conn.send(("memory", chunk_id, "out of memory sending the result", True))
            return


# ---- supervision in the main process ----

@dataclass(frozen=True, slots=True)
class WorkerInfo:
    pid: int
    busy: bool
    chunks: int
    rss_kb: int
    peak_rss_kb: int
    vm_kb: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    size: int
    alive: int
    busy: int
    chunks_done: int
    timeouts: int
    deaths: int
    memory_errors: int
    failures: int
    restarts: int
    last_replace_s: float | None  # from a chunk's deadline to a fresh worker ready
    workers: tuple[WorkerInfo, ...]


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


class _Frames:
    """Messages of a multiprocessing Connection, read without ever blocking.

    Event loops (uvloop among them) put a watched descriptor in non-blocking
    mode, where ``Connection.recv`` fails in the middle of a large message. The
    wire format is the Connection's own: a 4-byte big-endian length (-1, then 8
    bytes, for the largest) and the pickle.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            if len(self._buf) < 4:
                break
            (size,) = struct.unpack_from("!i", self._buf)
            head = 4
            if size == -1:
                if len(self._buf) < 12:
                    break
                (size,) = struct.unpack_from("!Q", self._buf, 4)
                head = 12
            if len(self._buf) < head + size:
                break
            out.append(bytes(self._buf[head:head + size]))
            del self._buf[:head + size]
        return out


class _Worker:
    def __init__(self, process: Any, tasks: Connection, conn: Connection) -> None:
        self.process = process
        self.tasks = tasks  # chunks out (blocking: the worker is idle and reading)
        self.conn = conn  # results in (non-blocking, watched by the loop)
        self.frames = _Frames()
        self.pid: int = process.pid
        self.ready = False
        self.chunk: tuple[str, asyncio.Future[tuple[str, Any]]] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.chunks = 0
        self.peak_rss_kb = 0
        self.started = time.monotonic()
        self.retire = False  # started with settings that have since changed
        self.leaving = False  # said it exits (after a MemoryError)


class WorkerPool:
    def __init__(self, *, size: int, handler: str, init: str | None = None,
                 init_args: tuple[Any, ...] = (), memory_limit_mb: int = 180,
                 chunk_timeout_s: float = 4.0, retries: int = 1,
                 start_method: str = "forkserver", env: Mapping[str, str] | None = None,
                 on_chunk: Callable[[float], None] | None = None,
                 start_timeout_s: float = 60.0) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self.size = size
        self.chunk_timeout_s = chunk_timeout_s
        # A worker not ready by then (stuck importing from a failing SD card,
        # say) is killed and counted as dying at start: it must not hold its
        # slot for good.
        self.start_timeout_s = start_timeout_s
        self.retries = retries
        self._handler = handler
        self._init = init
        self._init_args = init_args
        self._memory_limit_mb = memory_limit_mb
        self._env = {**WORKER_ENV, **(env or {})}
        self._ctx: Any = mp.get_context(start_method)
        self._preload = [handler.partition(":")[0]]
        self._workers: dict[int, _Worker] = {}
        self._idle: asyncio.Queue[_Worker] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._entered = False
        self._counts = dict(done=0, timeouts=0, deaths=0, memory=0, failures=0, restarts=0)
        self._last_replace_s: float | None = None
        self._replace_started: dict[int, float] = {}
        self._on_chunk = on_chunk  # seconds from handing a chunk over to its result
        self._early_deaths = 0  # workers in a row that died before they were ready
        self._entered_ready = False
        self._early_exit = ""

    # ---- lifecycle ----

    async def __aenter__(self) -> WorkerPool:
        if self._entered:
            raise RuntimeError("a WorkerPool is not re-entrant")
        self._entered = True
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        self._closing = False
        remove_stale_shared()
        for key, value in self._env.items():
            # The forkserver inherits the environment when it starts.
            os.environ.setdefault(key, value)
        if self._ctx.get_start_method() == "forkserver":
            self._ctx.set_forkserver_preload(self._preload)
        for _ in range(self.size):
            self._start_worker()
        await self._wait_ready()
        self._entered_ready = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
        self._entered = False

    def set_timeout(self, seconds: float) -> None:
        self.chunk_timeout_s = seconds

    def set_memory_limit(self, megabytes: int) -> None:
        """The address-space cap of workers started from now on."""
        self._memory_limit_mb = megabytes

    def reconfigure(self, init_args: tuple[Any, ...]) -> None:
        """New initializer arguments (e.g. a new zone index): every worker is
        replaced by one started with them, idle ones at once, busy ones when
        their chunk is done. No chunk is lost or interrupted."""
        self._init_args = init_args
        for worker in list(self._workers.values()):
            worker.retire = True
            if worker.ready and worker.chunk is None:
                self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Stops a worker in good order and starts its replacement."""
        assert self._loop is not None
        with contextlib.suppress(OSError, ValueError):
            worker.tasks.send(None)
        process = worker.process
        self._forget(worker)
        self._loop.call_later(2.0, _reap, process)
        if not self._closing:
            self._start_worker()

    def _start_unless_closing(self) -> None:
        if not self._closing:
            self._start_worker()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not self._workers and not self._early_deaths:
                raise WorkerError("every worker failed to start (see the log for why)")
            if self._early_deaths >= max(3, 2 * self.size):
                raise WorkerError(f"workers keep dying before they are ready: the last "
                                  f"{self._early_exit}")
            if len(self._workers) >= self.size and all(w.ready for w in self._workers.values()):
                return
            if time.monotonic() > deadline:
                raise WorkerError(f"workers did not start within {self.start_timeout_s:g} s")
            await asyncio.sleep(0.01)

    def _start_worker(self, replacing_since: float | None = None) -> None:
        assert self._loop is not None
        # One pipe each way: results are read without blocking, while a chunk
        # is written whole to an idle worker.
        task_in, task_out = self._ctx.Pipe(duplex=False)
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(task_in, child, self._handler, self._init, self._init_args,
                  self._memory_limit_mb),
            daemon=True, name="gatewayd-worker",
        )
        process.start()
        task_in.close()
        child.close()
        os.set_blocking(parent.fileno(), False)
        worker = _Worker(process, task_out, parent)
        self._workers[worker.pid] = worker
        if replacing_since is not None:
            self._replace_started[worker.pid] = replacing_since
        self._loop.add_reader(parent.fileno(), self._on_message, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        worker.deadline = self._loop.call_later(self.start_timeout_s, self._on_start_deadline,
                                                worker)

    def _on_start_deadline(self, worker: _Worker) -> None:
        worker.deadline = None
        if worker.ready or worker.pid not in self._workers:
            return
        logger.warning("worker %d not ready within %g s: killing it", worker.pid,
                       self.start_timeout_s, extra={"gatewayd_worker_pid": worker.pid,
                                                    "gatewayd_reason": "worker_start"})
        # Its exit is seen as a death before it was ready: another follows,
        # backing off.
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    def _forget(self, worker: _Worker) -> None:
        assert self._loop is not None
        if self._workers.pop(worker.pid, None) is None:
            return
        self._loop.remove_reader(worker.conn.fileno())
        self._loop.remove_reader(worker.process.sentinel)
        if worker.deadline is not None:
            worker.deadline.cancel()
        worker.conn.close()
        worker.tasks.close()
        worker.process.join(0)

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        worker.process.join(5)
        self._forget(worker)
        worker.process.close()

    # ---- messages and deaths ----

    def _on_message(self, worker: _Worker) -> None:
        fd = worker.conn.fileno()
        ended = False
        frames: list[bytes] = []
        try:
            for _ in range(64):  # at most 64 MiB per wake-up; the loop comes back
                data = os.read(fd, 1 << 20)
                if not data:
                    ended = True
                    break
                frames += worker.frames.feed(data)
        except BlockingIOError:
            pass
        except OSError:
            ended = True
        for frame in frames:
            try:
                message = ForkingPickler.loads(frame)
            except Exception as exc:  # an unpicklable result
                message = ("failed", worker.chunk[0] if worker.chunk else "", "error",
                           f"result could not be read: {exc}")
            if worker.pid in self._workers:
                self._handle_message(worker, message)
        if ended:
            self._on_exit(worker)

    def _handle_message(self, worker: _Worker, message: Any) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            if worker.deadline is not None:
                worker.deadline.cancel()
                worker.deadline = None
            self._early_deaths = 0
            started = self._replace_started.pop(worker.pid, None)
            if started is not None:
                self._last_replace_s = time.monotonic() - started
            assert self._idle is not None
            self._idle.put_nowait(worker)
            return
        if kind == "init_failed":
            logger.error("worker %d failed to start: %s", worker.pid, message[1])
            self._kill(worker)
            if self._entered_ready and not self._closing:
                # While running (new settings after a reload, say), the pool
                # must not shrink for good: try again, backing off.
                self._early_deaths += 1
                self._early_exit = f"failed to start: {message[1]}"
                self._counts["restarts"] += 1
                assert self._loop is not None
                self._loop.call_later(min(30.0, 0.05 * 2 ** min(self._early_deaths - 1, 10)),
                                      self._start_unless_closing)
            return
        chunk = worker.chunk
        if chunk is None or chunk[0] != message[1]:
            return
        worker.chunk = None
        if worker.deadline is not None:
            worker.deadline.cancel()
            worker.deadline = None
        worker.chunks += 1
        future = chunk[1]
        if not future.done():
            future.set_result((kind, message[2:]))
        if kind == "memory" and message[3]:
            worker.leaving = True  # it exits after a MemoryError: a fresh one follows
            return
        if kind in ("ok", "failed", "memory"):
            if worker.retire:
                self._retire(worker)
                return
            assert self._idle is not None
            self._idle.put_nowait(worker)

    def _on_exit(self, worker: _Worker) -> None:
        if worker.pid not in self._workers:
            return
        worker.process.join(1)
        if worker.process.exitcode is None:  # its pipe broke, yet it runs on
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            worker.process.join(5)
        code = worker.process.exitcode
        chunk = worker.chunk
        self._forget(worker)
        with contextlib.suppress(ValueError):
            worker.process.close()
        if chunk is not None and not chunk[1].done():
            chunk[1].set_result(("died", (_describe_exit(code),)))
        if not self._closing and not worker.ready:
            # Died before it was ready: whatever kills it at start will kill
            # the next one too. Back off, so that a broken worker does not
            # become a storm of processes on a hot SoC.
            self._early_deaths += 1
            self._early_exit = _describe_exit(code)
            delay = min(30.0, 0.05 * 2 ** min(self._early_deaths - 1, 10))
            logger.warning("worker %d %s before it was ready; another in %.2f s", worker.pid,
                           self._early_exit, delay,
                           extra={"gatewayd_worker_pid": worker.pid,
                                  "gatewayd_reason": "worker_died"})
            self._counts["restarts"] += 1
            assert self._loop is not None
            self._loop.call_later(delay, self._start_unless_closing)
            return
        if not self._closing:
            if worker.leaving and code == 0:
                logger.info("worker %d left after running out of memory; starting another",
                            worker.pid, extra={"gatewayd_worker_pid": worker.pid})
            else:
                logger.warning("worker %d %s%s; starting another", worker.pid,
                               _describe_exit(code), f" during chunk {chunk[0]}" if chunk else "",
                               extra={"gatewayd_worker_pid": worker.pid,
                                      "gatewayd_chunk": chunk[0] if chunk else None,
                                      "gatewayd_reason": "worker_died"})
            self._counts["restarts"] += 1
            self._start_worker()

    def _on_deadline(self, worker: _Worker) -> None:
        chunk = worker.chunk
        if chunk is None or worker.pid not in self._workers:
            return
        since = time.monotonic()
        logger.warning("chunk %s over its %.1f s: killing worker %d", chunk[0],
                       self.chunk_timeout_s, worker.pid,
                       extra={"gatewayd_chunk": chunk[0], "gatewayd_worker_pid": worker.pid,
                              "gatewayd_reason": "timeout"})
        worker.chunk = None
        self._kill(worker)
        if not chunk[1].done():
            chunk[1].set_result(("timeout", ()))
        if not self._closing:
            self._counts["restarts"] += 1
            self._start_worker(replacing_since=since)

    # ---- running chunks ----

    async def run(self, chunk_id: str, payload: object) -> object:
        """Runs one chunk on a worker; raises a WorkerError subclass on failure."""
        attempts = 0
        while True:
            kind, detail = await self._run_once(chunk_id, payload)
            if kind == "ok":
                self._counts["done"] += 1
                return detail[0]
            if kind == "timeout":
                self._counts["timeouts"] += 1
                raise ChunkTimeout(f"chunk {chunk_id} ran over its {self.chunk_timeout_s:g} s")
            if kind == "memory":
                self._counts["memory"] += 1
                raise ChunkMemoryError(f"chunk {chunk_id}: {detail[0]}")
            if kind == "failed":
                self._counts["failures"] += 1
                raise ChunkFailed(f"chunk {chunk_id}: {detail[1]}", reason=detail[0])
            self._counts["deaths"] += 1
            attempts += 1
            if attempts > self.retries or self._closing:
                raise WorkerDied(f"chunk {chunk_id}: worker {detail[0]}")
            logger.warning("chunk %s: worker %s; retrying", chunk_id, detail[0],
                           extra={"gatewayd_chunk": chunk_id, "gatewayd_reason": "worker_died"})

    async def _run_once(self, chunk_id: str, payload: object) -> tuple[str, tuple[Any, ...]]:
        assert self._idle is not None and self._loop is not None
        if self._closing:
            raise WorkerError("the worker pool is closed")
        while True:
            worker = await self._idle.get()
            if worker.pid in self._workers:
                break
        future: asyncio.Future[tuple[str, Any]] = self._loop.create_future()
        worker.chunk = (chunk_id, future)
        try:
            worker.tasks.send((chunk_id, payload))
        except (OSError, ValueError) as exc:
            worker.chunk = None
            self._kill(worker)
            if not self._closing:
                self._counts["restarts"] += 1
                self._start_worker()
            return "died", (f"could not take the chunk: {exc}",)
        worker.deadline = self._loop.call_later(self.chunk_timeout_s, self._on_deadline, worker)
        sent = time.monotonic()
        outcome = await future
        if outcome[0] == "ok" and self._on_chunk is not None:
            self._on_chunk(time.monotonic() - sent)
        return outcome

    # ---- shared memory ----

    def share(self, array: np.ndarray) -> SharedArray:
        return SharedArray.create(array)

    def release(self, handle: SharedArray) -> None:
        handle.release()

    # ---- observation and shutdown ----

    def stats(self) -> PoolStats:
        infos = []
        for w in self._workers.values():
            status = _proc_status(w.pid)
            w.peak_rss_kb = max(w.peak_rss_kb, status.get("VmHWM", 0))
            infos.append(WorkerInfo(w.pid, w.chunk is not None, w.chunks,
                                    status.get("VmRSS", 0), w.peak_rss_kb,
                                    status.get("VmSize", 0)))
        c = self._counts
        return PoolStats(self.size, sum(w.ready for w in self._workers.values()),
                         sum(i.busy for i in infos), c["done"], c["timeouts"], c["deaths"],
                         c["memory"], c["failures"], c["restarts"], self._last_replace_s,
                         tuple(infos))

    async def close(self, grace_s: float = 5.0) -> None:
        """Lets chunks in flight finish within ``grace_s``, then stops every worker."""
        if self._loop is None:
            return
        self._closing = True
        deadline = time.monotonic() + grace_s
        while any(w.chunk is not None for w in self._workers.values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        for worker in list(self._workers.values()):
            if worker.chunk is not None and not worker.chunk[1].done():
                worker.chunk[1].set_result(("died", ("stopped at shutdown",)))
            with contextlib.suppress(OSError, ValueError):
                worker.tasks.send(None)
        stop_by = time.monotonic() + 1.0
        for worker in list(self._workers.values()):
            worker.process.join(max(0.0, stop_by - time.monotonic()))
            if worker.process.exitcode is None:
                self._kill(worker)
            else:
                self._forget(worker)
                worker.process.close()
        self._loop = None


def stop_helper_processes() -> None:
    """Stops the forkserver and the resource tracker that multiprocessing started
    for this process, and waits until they have exited. Call it last, once every
    pool has closed; a pool made afterwards starts them anew.

    Left alone, both end once this process has exited and their pipes close. Under
    systemd that is too late: with KillMode=mixed, whatever is still in the unit's
    cgroup when the main process exits gets SIGKILL at once, and the tracker would
    die before it unlinks what it tracks. The forkserver goes first: it holds the
    tracker's pipe open too.
    """
    from multiprocessing import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(helper, "_stop", None)  # CPython's own, since 3.8
        if stop is not None:
            with contextlib.suppress(OSError):
                stop()


def _reap(process: Any) -> None:
    """Collects a retired worker; one that has not stopped by now is killed."""
    process.join(0)
    if process.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.join(1)
    with contextlib.suppress(ValueError):
        process.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"

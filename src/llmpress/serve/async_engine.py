"""AsyncEngine: the single-threaded LLMEngine behind asyncio handlers.

One background thread owns the engine: it is the only caller of add_request / step /
abort_request. Handlers talk to it through a FIFO inbox (so an abort queued after an
add always sees the request), and it answers through `loop.call_soon_threadsafe`.
Between requests it sleeps on the inbox; while requests are unfinished it steps as
fast as the model runs, so every step batches whatever arrived meanwhile
(continuous batching across HTTP requests).

Each HTTP request is one RequestStream over one or more engine requests (a
completions call may carry several prompts). A stream keeps only the latest output
per engine request: outputs are cumulative (full text and token ids so far), so a
slow client skips intermediate ones without losing anything and its memory stays
O(1) however far it falls behind.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from ..engine import LLMEngine, RequestOutput, SamplingParams
from .metrics import Metrics

log = logging.getLogger("llmpress.serve")


def _release_openmp_pool() -> None:
    """Free the calling thread's OpenMP worker threads (OpenMP 5's omp_pause_resource_all).

    torch's kernels and ours run on GNU OpenMP. Each thread that opens a parallel region gets its
    own team, and while libgomp manages more threads than there are CPUs, it stops spinning
    between regions and wakes workers through futexes. Once the loading thread's team exists, the
    engine thread's regions pay that on every call: single-stream decode through the server ran at
    40% of in-process speed (SmolLM2 W4A16: 56 vs 139 tok/s). The event loop thread does no
    parallel work after loading, so its pool can go. No-op where libgomp is not the runtime."""
    try:
        ctypes.CDLL("libgomp.so.1").omp_pause_resource_all(1)  # omp_pause_soft
    except (OSError, AttributeError):
        pass


class EngineOverloaded(Exception):
    """More requests in flight than the server's bound (HTTP 503)."""


class EngineStopped(Exception):
    """The server is shutting down (or never started): HTTP 503."""


class EngineFailed(Exception):
    """The engine raised while generating; the requests in flight end with this (HTTP 500)."""


class ClientDisconnected(Exception):
    """The HTTP client went away; the stream is released and its sequences aborted."""


@dataclass
class _Track:
    """Engine-thread bookkeeping for one engine request (metrics and routing)."""

    stream: RequestStream
    index: int  # position of the prompt within its HTTP request
    num_prompt_tokens: int
    seen: list[int]  # tokens already counted, per sample
    last: list[float]  # time of each sample's latest token
    first_token: bool = False


@dataclass
class _Add:
    stream: RequestStream
    items: list[tuple[str, dict, SamplingParams]]  # (engine request id, prompt, params)


@dataclass
class _Abort:
    request_ids: list[str]


_STOP = object()


@dataclass(eq=False)
class RequestStream:
    """Outputs of one HTTP request's engine requests, read by its handler with
    `async for updates in stream` (each update: {prompt index: latest RequestOutput})."""

    owner: AsyncEngine
    request_ids: list[str]
    arrival: float
    accepted: asyncio.Future = field(init=False)
    watcher: asyncio.Task | None = None  # the HTTP disconnect watcher, cancelled on release
    _updates: dict[int, RequestOutput] = field(default_factory=dict)
    _error: BaseException | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _done: set[int] = field(default_factory=set)
    released: bool = False

    def __post_init__(self) -> None:
        self.accepted = asyncio.get_running_loop().create_future()

    @property
    def finished(self) -> bool:
        return len(self._done) == len(self.request_ids)

    # -- called on the loop by the engine thread ---------------------------------------
    def _put(self, index: int, out: RequestOutput) -> None:
        self._updates[index] = out
        self._ready.set()

    def _accept(self) -> None:
        if not self.accepted.done():
            self.accepted.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """End the stream with `exc`: raised by the reader's next iteration (or by `accepted`)."""
        if self._error is None:
            self._error = exc
        if not self.accepted.done():
            self.accepted.set_exception(exc)
            self.accepted.exception()  # mark retrieved: nobody may be awaiting it any more
        self._ready.set()

    # -- reader -------------------------------------------------------------------------
    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> dict[int, RequestOutput]:
        if self.finished:
            raise StopAsyncIteration
        await self._ready.wait()
        self._ready.clear()
        batch, self._updates = self._updates, {}
        self._done.update(i for i, out in batch.items() if out.finished)
        if self._error is not None and not self.finished:
            raise self._error
        return batch

    def release(self) -> None:
        """Idempotent end of the request: abort what is unfinished (frees its KV blocks on
        the engine's next loop turn), give back its admission slots, stop the watcher."""
        if self.released:
            return
        self.released = True
        self.owner._leave(self)
        if self.watcher is not None and self.watcher is not asyncio.current_task():
            self.watcher.cancel()
        self.fail(ClientDisconnected())  # wakes a reader still waiting, if any


class AsyncEngine:
    def __init__(self, engine: LLMEngine, metrics: Metrics, max_pending: int):
        self.engine = engine
        self.metrics = metrics
        self.max_pending = max_pending  # engine requests in flight before new ones get 503
        self.num_pending = 0  # loop side: engine requests admitted and not yet released
        self.error: BaseException | None = None  # why the engine loop died, if it did
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Track] = {}  # engine thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle (event loop) ---------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _release_openmp_pool()  # the loop thread loaded the model; the engine thread computes from now on
        self._thread = threading.Thread(target=self._run, name="llmpress-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    async def shutdown(self) -> None:
        """Abort whatever is still in flight (its readers get EngineStopped) and join the thread."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._inbox.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- requests (event loop) ----------------------------------------------------------
    def open(self, request_ids: list[str], arrival: float) -> RequestStream:
        """Admit an HTTP request's engine requests, or raise EngineOverloaded / EngineStopped.
        Admission happens before tokenisation, so the bound covers that work too."""
        if not self.alive:
            raise EngineStopped("the engine is not running")
        if self.num_pending + len(request_ids) > self.max_pending:
            raise EngineOverloaded(f"the server has {self.num_pending} requests in flight "
                                   f"(bound {self.max_pending}); retry later")
        self.num_pending += len(request_ids)
        return RequestStream(self, request_ids, arrival)

    async def submit(self, stream: RequestStream, prompts: list[dict], params: list[SamplingParams]) -> None:
        """Queue the stream's engine requests; return once the engine accepted all of them,
        or raise what add_request raised (nothing of the stream is left running then)."""
        if stream.released:  # the client left while we tokenised: queue nothing
            raise ClientDisconnected()
        if not self.alive:
            raise EngineStopped("the engine is not running")
        self._inbox.put(_Add(stream, list(zip(stream.request_ids, prompts, params))))
        await stream.accepted

    def _leave(self, stream: RequestStream) -> None:
        self.num_pending -= len(stream.request_ids)
        unfinished = [rid for i, rid in enumerate(stream.request_ids) if i not in stream._done]
        if unfinished and self._thread is not None:  # unknown ids are ignored by the engine thread
            self._inbox.put(_Abort(unfinished))

    # -- engine thread ------------------------------------------------------------------
    def _call(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: nobody is listening any more
            pass

    def _run(self) -> None:
        try:
            while self._drain(block=not self.engine.has_unfinished()):
                if self.engine.has_unfinished():
                    self._step()
                self._publish_gauges()
        except BaseException as e:  # a bug in this loop, not in one request: end everything loudly
            log.exception("engine loop died")
            self.error = e
            self._fail_all(EngineFailed(f"the engine loop died: {e!r}"))
        self._publish_gauges()

    def _drain(self, block: bool) -> bool:
        """Apply queued adds and aborts in arrival order; False once stop was requested."""
        cmds = [self._inbox.get()] if block else []
        while True:
            try:
                cmds.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        stopping = False
        for cmd in cmds:
            if cmd is _STOP:
                stopping = True
            elif isinstance(cmd, _Abort):
                self._abort(cmd.request_ids)
            elif stopping:  # arrived after stop: refuse rather than start work nobody will run
                self._call(cmd.stream.fail, EngineStopped("the server is shutting down"))
            else:
                self._add(cmd)
        if stopping:
            self._fail_all(EngineStopped("the server is shutting down"))
        return not stopping

    def _add(self, cmd: _Add) -> None:
        added: list[str] = []
        try:
            for rid, prompt, params in cmd.items:
                self.engine.add_request(rid, prompt, params)
                added.append(rid)
        except Exception as e:  # all or nothing: one bad prompt fails the whole HTTP request
            for rid in added:
                self.engine.abort_request(rid)
            self._call(cmd.stream.fail, e)
            return
        for i, (rid, prompt, params) in enumerate(cmd.items):
            n_prompt = len(prompt["prompt_token_ids"])
            self._live[rid] = _Track(cmd.stream, i, n_prompt, [0] * params.n, [0.0] * params.n)
            self.metrics.add_prompt(n_prompt)
        self._call(cmd.stream._accept)

    def _abort(self, request_ids: list[str]) -> None:
        now = time.time()
        for rid in request_ids:
            t = self._live.pop(rid, None)
            if t is None:
                continue  # finished meanwhile, or its add failed
            self.engine.abort_request(rid)
            self.metrics.on_finished("abort", now - t.stream.arrival, t.num_prompt_tokens, sum(t.seen), None, 0)

    def _fail_all(self, exc: BaseException) -> None:
        for rid, t in list(self._live.items()):
            try:
                self.engine.abort_request(rid)
            except Exception:  # the engine may be inconsistent after a failed step; keep going
                log.exception("abort_request(%s) failed", rid)
            self._call(t.stream.fail, exc)
        self._live.clear()

    def _step(self) -> None:
        try:
            outs = self.engine.step()
        except Exception as e:
            # The step's state is unknown: end every in-flight request with the error (they
            # see it as an SSE error event or a 500) and free their blocks; new requests
            # still get served.
            log.exception("engine step failed; aborting %d requests", len(self._live))
            self._fail_all(EngineFailed(f"the engine failed while generating: {e!r}"))
            return
        now = time.time()
        for out in outs:
            t = self._live.get(out.request_id)
            if t is None:
                continue
            self._record(t, out, now)
            if out.finished:
                del self._live[out.request_id]
            self._call(t.stream._put, t.index, out)

    def _record(self, t: _Track, out: RequestOutput, now: float) -> None:
        new, gaps = 0, []
        for c in out.outputs:
            n, prev = len(c.token_ids), t.seen[c.index]
            if n > prev:
                if prev:  # one gap per token, even if a step ever yields several
                    gaps += [(now - t.last[c.index]) / (n - prev)] * (n - prev)
                t.seen[c.index], t.last[c.index] = n, now
                new += n - prev
        ttft = None
        if new and not t.first_token:
            t.first_token, ttft = True, now - t.stream.arrival
        self.metrics.on_tokens(new, gaps, ttft)
        if out.finished:
            first = out.metrics.get("first_token_time")
            reasons = {c.finish_reason for c in out.outputs}
            reason = "length" if "length" in reasons else "abort" if "abort" in reasons else "stop"
            self.metrics.on_finished(reason, now - t.stream.arrival, t.num_prompt_tokens, sum(t.seen),
                                     now - first if first else None, out.metrics.get("preemptions", 0))

    def _publish_gauges(self) -> None:
        sched, blocks = self.engine.scheduler, self.engine.blocks
        running = {s.request_id for s in sched.running}
        waiting = {s.request_id for s in sched.waiting} - running
        self.metrics.set_gauges(len(running), len(waiting), 1 - blocks.num_free / blocks.num_blocks)

"""Results out: each record published at QoS 1, or kept in the outbox.

A result is safe once the broker has acknowledged it (PUBACK) or the outbox
holds it; then the inputs it was made from are released, and may be
acknowledged. A result the broker does not acknowledge within
``timeout_s`` goes to the outbox, its publish going on (the broker may then
get it twice, with the same id). One that can be neither published nor
spooled is abandoned: its inputs stay unacknowledged, and the broker sends
them again. While the link is down, or while results are spooled already,
new ones go to the outbox behind them, so that order holds.

Once intake has stopped (``spooling`` False), a result the broker has not
taken leaves its inputs at the broker for the next start, rather than
going to the outbox. A result with no inputs to leave there (a serial
port's fix: no broker holds what it came from) goes to the outbox all the
same, and so does one still on its way when the stop's grace is over.

Inputs are named by tokens, which the owner (the daemon) gives with each
result and gets back through ``release`` and ``abandon``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from gatewayd.errors import GatewayError

logger = logging.getLogger(__name__)

__all__ = ["ResultSender"]

Tokens = tuple[object, ...]  # the inputs a result was made from


class _Result:
    """A result published and not yet acknowledged by the broker, in the
    order of publishing, with the time by which it must be (loop time)."""

    __slots__ = ("deadline", "payload", "record_id", "settled", "tokens", "topic")

    def __init__(self, topic: str, payload: bytes, record_id: str, tokens: Tokens,
                 deadline: float) -> None:
        self.topic = topic
        self.payload = payload
        self.record_id = record_id
        self.tokens = tokens
        self.deadline = deadline
        self.settled = False  # acknowledged, failed or past its deadline: dealt with


class ResultSender:
    def __init__(self, *, timeout_s: float, release: Callable[[Sequence[object]], None],
                 abandon: Callable[[Tokens], None],
                 counts: collections.Counter[str]) -> None:
        self.timeout_s = timeout_s  # for a PUBACK, before the result is spooled
        self.outbox: Any = None  # where results wait for the broker; None: nowhere
        # False once intake has stopped: what the broker does not take then
        # stays with its inputs at the broker (see the module's docstring).
        self.spooling = True
        self._release = release
        self._abandon = abandon
        self._counts = counts
        self._client: Any = None
        self._up = asyncio.Event()  # clear while the client is being replaced
        # Spooling, publishes waiting for a client, and the owner's own
        # (lineage): waited for at shutdown.
        self._tasks: set[asyncio.Future[Any]] = set()
        # Results published, oldest first, while their acknowledgement is due;
        # one timer watches the oldest one's deadline.
        self._results: collections.deque[_Result] = collections.deque()
        self._unsettled = 0  # results published and not yet dealt with
        self._spools = 0  # results put in the outbox and not yet on disk
        self._deadline_timer: asyncio.TimerHandle | None = None

    # ---- the link ----

    def attach(self, client: Any) -> None:
        """Publishes through ``client`` (an MqttClient) from now on."""
        self._client = client
        self._up.set()

    def detach(self) -> None:
        """The client is being replaced: publishes wait for the next one."""
        self._up.clear()

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publishes through the client of the moment, waiting for one while
        it is being replaced."""
        await self._up.wait()
        await self._client.publish(topic, payload, qos, retain)

    async def wait_up(self) -> None:
        await self._up.wait()

    def track(self, future: asyncio.Future[Any]) -> None:
        """Keeps ``future`` among those shutdown waits for, until it is done."""
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    # ---- results ----

    @property
    def busy(self) -> bool:
        """Whether results (or tracked publishes) are still on their way."""
        return bool(self._tasks) or self._unsettled > 0

    def send(self, topic: str, payload: bytes, tokens: Tokens, record_id: str) -> None:
        """Publishes a result; one the broker does not take in time goes to the
        outbox. Its inputs are released once it is published or spooled."""
        if self._behind_outbox():
            from gatewayd.outbox import Entry

            # Behind what is spooled already, or on its way to the disk: order holds.
            self.spool(Entry(topic, payload, record_id), tokens)
            return
        loop = asyncio.get_running_loop()
        result = _Result(topic, payload, record_id, tokens, loop.time() + self.timeout_s)
        self._results.append(result)
        self._unsettled += 1
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(result.deadline, self._past_deadline)
        if self._up.is_set():
            try:
                self._client.send(topic, payload, self._published, result)
                return
            except GatewayError:
                pass
        # The client is being replaced (reload): published once the new one is there.
        task = asyncio.ensure_future(self.publish(topic, payload, 1, False))
        self.track(task)

        def done(t: asyncio.Future[None]) -> None:
            if not t.cancelled():  # cancelled: stopping, the inputs stay unacknowledged
                self._published(result, t.exception())

        task.add_done_callback(done)

    def send_many(self, results: list[tuple[str, bytes, Tokens, str]]) -> None:
        """``send`` of many, in order: each is (topic, payload, tokens, record_id)."""
        if not results:
            return
        client = self._client
        if not self._up.is_set() or self._behind_outbox():
            for topic, payload, tokens, record_id in results:
                self.send(topic, payload, tokens, record_id)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        made = [_Result(topic, payload, record_id, tokens, deadline)
                for topic, payload, tokens, record_id in results]
        self._results.extend(made)
        self._unsettled += len(made)
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(deadline, self._past_deadline)
        try:
            taken = client.send_many([(r.topic, r.payload, r) for r in made], self._published,
                                     self._published_many)
        except GatewayError:
            taken = 0
        if taken < len(made):
            # The rest go one by one: behind a refused one that went to the
            # outbox, or by way of a task while the client is replaced.
            rest = made[taken:]
            for _ in rest:
                self._results.pop()  # the newest, not settled yet
            self._unsettled -= len(rest)
            for r in rest:
                self.send(r.topic, r.payload, r.tokens, r.record_id)

    def _behind_outbox(self) -> bool:
        """Whether a result goes to the outbox now: the link is down, or
        results wait there (or are on their way to its disk) already."""
        outbox = self.outbox
        return outbox is not None and bool(
            self._spools or len(outbox) or not self._client.connected)

    def _published(self, result: _Result, error: BaseException | None) -> None:
        """The end of a result's publish (called once by the MQTT client)."""
        if error is None:
            self._published_many([result])
        elif self._settle([result]) and not self._spool_untaken(result):
            self._counts["publish_failed"] += 1
            logger.warning("result not published: %s", error)
            self._abandon(result.tokens)  # unacknowledged: the broker sends them again

    def _published_many(self, results: list[_Result]) -> None:
        """Results the broker has, in order: their inputs are released together."""
        tokens = [token for result in self._settle(results) for token in result.tokens]
        if tokens:
            self._release(tokens)

    def _settle(self, results: list[_Result]) -> list[_Result]:
        """Marks publishes ended: those of ``results`` not dealt with already
        (past their deadline, spooled; the broker may still get them)."""
        ended = [result for result in results if not result.settled]
        for result in ended:
            result.settled = True
        self._unsettled -= len(ended)
        queue = self._results
        while queue and queue[0].settled:
            queue.popleft()
        return ended

    def _past_deadline(self) -> None:
        """Results the broker has not acknowledged in time go to the outbox
        (the publish goes on: the broker may get a result twice)."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        results = self._results
        while results and (results[0].settled or results[0].deadline <= now):
            result = results.popleft()
            if result.settled:
                continue
            result.settled = True
            self._unsettled -= 1
            if not self._spool_untaken(result):
                self._abandon(result.tokens)
        # A timeout shortened by a reload lets later results wait as long as
        # the older ones ahead of them.
        if results:
            self._deadline_timer = loop.call_at(results[0].deadline, self._past_deadline)

    def _spool_untaken(self, result: _Result) -> bool:
        """Puts a result the broker has not taken in the outbox, if there is
        one and it should go there (see the module's docstring): True if it
        did."""
        if self.outbox is None or not (self.spooling or not result.tokens):
            return False
        from gatewayd.outbox import Entry

        self.spool(Entry(result.topic, result.payload, result.record_id), result.tokens)
        return True

    def spool(self, entry: Any, tokens: Tokens) -> None:
        """Puts a result in the outbox; its inputs are released once it is on disk."""
        future = self.outbox.put(entry)
        self.track(future)
        self._spools += 1

        def done(f: asyncio.Future[None]) -> None:
            self._spools -= 1
            if f.cancelled():
                return
            if f.exception() is not None:
                self._counts["spool_failed"] += 1
                failed = self._counts["spool_failed"]
                if failed in (1, 10) or failed % 100 == 0:  # a full disk fails every one
                    logger.error("result neither published nor spooled (%d so far): %s",
                                 failed, f.exception(),
                                 extra={"gatewayd_reason": "spool_failed"})
                self._abandon(tokens)  # unacknowledged: the broker sends them again
                return
            self._counts["spooled"] += 1
            self._release(tokens)

        future.add_done_callback(done)

    async def settle(self, until: float) -> None:
        """Waits, until the monotonic time ``until``, for what is on its way;
        then stops watching deadlines. Stopping, results still unacknowledged
        leave their inputs unacknowledged, and those with none go to the
        outbox, if there is one (the outbox's close writes them)."""
        while self.busy and time.monotonic() < until:
            if self._tasks:
                await asyncio.wait(self._tasks,
                                   timeout=min(0.05, max(0.01, until - time.monotonic())))
            else:
                await asyncio.sleep(0.01)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self.outbox is None:
            return
        left = [r for r in self._results if not r.settled and not r.tokens]
        self._settle(left)
        for result in left:
            self._spool_untaken(result)

    def cancel(self) -> None:
        """Cancels what is still on its way (the last step of a shutdown)."""
        for task in list(self._tasks):
            task.cancel()

"""Dynamic batching: the aligned crops of concurrent requests go to the recogniser in one call.

A request hands its crops to :meth:`EmbedBatcher.embed` and awaits its rows. The batcher waits at
most ``max_wait_s`` after the first crop arrives (or until ``max_batch`` crops are queued), then runs
one ``embed`` call on a worker thread -- off the event loop -- and hands each request its rows.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class BatchStats:
    calls: int = 0
    crops: int = 0
    largest: int = 0
    requests: int = 0
    sizes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"recogniser_calls": self.calls, "crops": self.crops, "requests": self.requests,
                "largest_batch": self.largest,
                "mean_batch": round(self.crops / self.calls, 2) if self.calls else 0.0}


class EmbedBatcher:
    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait_s: float = 0.005):
        self._embed = embed
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fresnet-recogniser")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=False)

    async def embed(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.zeros((0, 0), np.float32)
        if self._task is None:  # not started (e.g. no lifespan): embed directly, still off the loop
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._embed, crops)
        future = asyncio.get_running_loop().create_future()
        self._queue.append((crops, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while sum(len(c) for c, _ in self._queue) < self.max_batch and loop.time() < deadline:
                await asyncio.sleep(min(0.001, max(0.0, deadline - loop.time())))
            taken, count = [], 0
            while self._queue and (not taken or count + len(self._queue[0][0]) <= self.max_batch):
                crops, future = self._queue.pop(0)
                taken.append((crops, future))
                count += len(crops)
            if not self._queue:
                self._wake.clear()
            live = [(c, f) for c, f in taken if not f.cancelled()]
            if not live:
                continue
            batch = np.concatenate([c for c, _ in live])
            try:
                rows = await loop.run_in_executor(self._worker, self._embed, batch)
            except Exception as exc:
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.crops += len(batch)
            self.stats.requests += len(live)
            self.stats.largest = max(self.stats.largest, len(batch))
            start = 0
            for crops, future in live:
                if not future.done():
                    future.set_result(rows[start:start + len(crops)])
                start += len(crops)

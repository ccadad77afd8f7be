"""Dynamic batching for ``embedlab serve``: one worker thread owns TensorFlow and the indexes, and uploads that
arrive while it is busy are embedded together as one batch, so each backbone runs once per batch and throughput
grows with load."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedlab.serve.comparison import Comparison, Row


class Batcher:
    """Feeds the engine from one worker thread; uploads waiting together go through as one batch."""

    def __init__(self, engine: Comparison) -> None:
        self.engine = engine
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="embedlab-query")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.queries = 0

    async def start(self) -> None:
        """Start the batching loop (inside the server's event loop)."""
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and the worker thread."""
        if self.task:
            self.task.cancel()
        self.worker.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn, *args):
        """Run ``fn`` on the worker thread (in turn with the batches)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def search_upload(self, image: np.ndarray, rows: list[Row], k: int) -> tuple[dict, int]:
        """The upload's results and the size of the batch it went through."""
        assert self.queue is not None, "Batcher.start() was not awaited"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(((image, rows, k), future))
        return await future

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.engine.params.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(query, future) for query, future in batch if not future.done()]  # clients that gave up
            if not batch:
                continue
            try:
                answers = await self.call(self.engine.search_uploads, [query for query, _ in batch])
            except Exception as err:  # a bug, not bad input: every waiting request gets the 500, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches, self.queries = self.batches + 1, self.queries + len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result((answer, len(batch)))

"""The threaded decode -> infer -> consume pipeline: three stages overlapped, bounded queues, frame order kept."""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when the pipeline is stopping (so no thread hangs on a full queue)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_pipeline(frames: Iterable[T], infer: Callable[[List[T]], Sequence[R]],
                 consume: Callable[[T, R], None], batch_size: int = 8, depth: int = 2,
                 stop_on_interrupt: Optional[Callable[[], None]] = None) -> int:
    """Decode -> infer -> consume with the three stages overlapped; returns the frame count.

    * a reader thread iterates ``frames`` (e.g. a VideoReader: ffmpeg decodes in its own process)
      and groups them into batches of ``batch_size``;
    * the calling thread runs ``infer(batch) -> results`` (one result per frame), so CUDA/torch
      state stays on the caller's thread;
    * a writer thread calls ``consume(frame, result)`` in frame order (drawing, encoding, JSON).

    Queues hold at most ``depth`` batches each, so memory is bounded by about
    ``(2 * depth + 3) * batch_size`` frames whatever the video length. An exception in any stage
    stops the other two and is re-raised here. ``stop_on_interrupt`` (webcam): on Ctrl-C call it
    (to stop the source) and finish the frames already read instead of raising.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return _Pipeline(frames, infer, consume, batch_size, depth).run(stop_on_interrupt)


class _Pipeline:
    """The state shared by the three stages of one :func:`run_pipeline` call."""

    def __init__(self, frames: Iterable[Any], infer: Callable[[List[Any]], Sequence[Any]],
                 consume: Callable[[Any, Any], None], batch_size: int, depth: int) -> None:
        self.frames, self.infer, self.consume, self.batch_size = frames, infer, consume, batch_size
        self.stop = threading.Event()
        self.q_in: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self.q_out: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self.consumer_error: List[BaseException] = []
        self.count = 0

    def read(self) -> None:
        """Reader thread: iterate the source, hand over batches; then _END, or the source's exception."""
        batch: List[Any] = []
        it = iter(self.frames)
        try:
            for frame in it:
                if self.stop.is_set():
                    return
                batch.append(frame)
                if len(batch) == self.batch_size:
                    if not _put(self.q_in, batch, self.stop):
                        return
                    batch = []
            if batch:
                _put(self.q_in, batch, self.stop)
            _put(self.q_in, _END, self.stop)
        except BaseException as exc:  # handed to the main thread
            _put(self.q_in, _Failure(exc), self.stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def write(self) -> None:
        """Writer thread: consume (frame, result) pairs in order until _END; a failure stops the others."""
        try:
            while True:
                item = self.q_out.get()
                if item is _END:
                    return
                batch, results = item
                for frame, result in zip(batch, results):
                    self.consume(frame, result)
                    self.count += 1
        except BaseException as exc:
            self.consumer_error.append(exc)
            self.stop.set()

    def infer_all(self, stop_on_interrupt: Optional[Callable[[], None]]) -> None:
        """Calling thread: infer each batch as it arrives; Ctrl-C stops the source when it may be stopped."""
        while True:
            try:
                try:
                    item = self.q_in.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():  # the writer failed
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                results = self.infer(item)
                if len(results) != len(item):
                    raise RuntimeError(f"infer returned {len(results)} results for {len(item)} frames")
                if not _put(self.q_out, (item, results), self.stop):
                    return
            except KeyboardInterrupt:
                if stop_on_interrupt is None:
                    raise
                stop_on_interrupt()  # the source ends; frames already read are still written
                stop_on_interrupt = None  # a second Ctrl-C aborts

    def run(self, stop_on_interrupt: Optional[Callable[[], None]]) -> int:
        reader = threading.Thread(target=self.read, name="video-decode", daemon=True)
        writer = threading.Thread(target=self.write, name="video-encode", daemon=True)
        reader.start()
        writer.start()
        try:
            self.infer_all(stop_on_interrupt)
        except BaseException:
            self.stop.set()
            raise
        finally:
            self._finish(reader, writer)
        if self.consumer_error:
            raise self.consumer_error[0]
        return self.count

    def _finish(self, reader: threading.Thread, writer: threading.Thread) -> None:
        """Let the writer drain what it has (normal end) or stop at once (failure); unblock and join the reader."""
        while writer.is_alive():
            try:
                self.q_out.put(_END, timeout=0.1)
                break
            except queue.Full:
                if self.stop.is_set():
                    with contextlib.suppress(queue.Empty):
                        self.q_out.get_nowait()
        writer.join()
        self.stop.set()
        with contextlib.suppress(queue.Empty):  # unblock a reader waiting on a full queue
            while True:
                self.q_in.get_nowait()
        reader.join(timeout=10)

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
    stop = threading.Event()
    q_in: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    q_out: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    consumer_error: List[BaseException] = []
    count = [0]

    def read() -> None:
        batch: List[T] = []
        it = iter(frames)
        try:
            for frame in it:
                if stop.is_set():
                    return
                batch.append(frame)
                if len(batch) == batch_size:
                    if not _put(q_in, batch, stop):
                        return
                    batch = []
            if batch:
                _put(q_in, batch, stop)
            _put(q_in, _END, stop)
        except BaseException as exc:  # handed to the main thread
            _put(q_in, _Failure(exc), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def write() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                batch, results = item
                for frame, result in zip(batch, results):
                    consume(frame, result)
                    count[0] += 1
        except BaseException as exc:
            consumer_error.append(exc)
            stop.set()

    reader = threading.Thread(target=read, name="video-decode", daemon=True)
    writer = threading.Thread(target=write, name="video-encode", daemon=True)
    reader.start()
    writer.start()
    try:
        while True:
            try:
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # the writer failed
                        break
                    continue
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                results = infer(item)
                if len(results) != len(item):
                    raise RuntimeError(f"infer returned {len(results)} results for {len(item)} frames")
                if not _put(q_out, (item, results), stop):
                    break
            except KeyboardInterrupt:
                if stop_on_interrupt is None:
                    raise
                stop_on_interrupt()  # the source ends; frames already read are still written
                stop_on_interrupt = None  # a second Ctrl-C aborts
    except BaseException:
        stop.set()
        raise
    finally:
        # let the writer drain what it has (normal end) or stop at once (failure)
        while writer.is_alive():
            try:
                q_out.put(_END, timeout=0.1)
                break
            except queue.Full:
                if stop.is_set():
                    with contextlib.suppress(queue.Empty):
                        q_out.get_nowait()
        writer.join()
        stop.set()
        with contextlib.suppress(queue.Empty):  # unblock a reader waiting on a full queue
            while True:
                q_in.get_nowait()
        reader.join(timeout=10)
    if consumer_error:
        raise consumer_error[0]
    return count[0]

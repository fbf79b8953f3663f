"""The prediction log: every scored record as one JSON line, written off the request path.

A line holds ``ts`` (UTC, ISO 8601), ``request_id``, ``service``, ``model_version``,
``inference`` (the predictor's path: ``compiled`` or why the pipeline), ``inputs`` (the validated
field values), ``outputs`` (what the caller was answered) and ``shadow``: false for the answer the
caller got, true for the ``@challenger``'s outputs on the same record (``PORTFOLIO_SHADOW``,
``monitoring/shadow.py``: same ``request_id``, the challenger's ``model_version``).
``request_id`` is the request's ``X-Request-ID`` (or the one the API generated) for ``/predict``; a
record of ``/predict/batch`` gets ``<request id>:<index>`` (0-based position in ``records``); the
CLI's ``--log-predictions`` uses ``<run id>:<row>`` (0-based data row of the input CSV).

Files: ``<PORTFOLIO_PREDICTION_LOG_DIR>/<service>/<service>-<start>-<pid>-<tag>-<n>.jsonl``, one series
per process (so API workers never interleave lines), a new file once the current one passes
``PORTFOLIO_PREDICTION_LOG_MAX_BYTES``.

Mostly off the hot path: a request appends one item to a bounded queue that wakes nobody
(``queueing.RecordQueue``); every ``FLUSH_INTERVAL_S`` (or at once when the queue is more than half
full) the writer writes everything queued in one call. In the API the writer is a callback on its
event loop (``attach``: a thread cost the event loop the interpreter lock, see there); elsewhere
(the CLI) a background thread. Records are sampled (``PORTFOLIO_PREDICTION_LOG_SAMPLE``) by a
hash of the record's id, so a record's champion and shadow lines are kept or left out together.
A request's records are queued by reference and serialised by the writer, from the event loop a
slice at a time. When the queue is full the request's records are not logged and are counted in
``portfolio_prediction_log_records_total{outcome="dropped_queue_full"}`` (and a warning is
logged), never silently. ``close()`` (the API's shutdown on SIGTERM/SIGINT) drains the queue and
flushes the file.

Retention: with ``PORTFOLIO_PREDICTION_LOG_RETENTION_DAYS`` > 0, the writer deletes the service's log
files last modified longer ago than that (at start, at each rotation and hourly; labels and
reports are kept). 0 (the default) keeps every file.

What a crash can lose at most: the writer flushes to the OS each time it has emptied the queue, so
a killed process (SIGKILL, OOM) loses at most the requests still queued (those of the last
``FLUSH_INTERVAL_S``, more if the writer fell behind; ≤ ``PORTFOLIO_PREDICTION_LOG_QUEUE`` records) plus
the lines written since the last flush; a machine crash also loses what the OS had not written
to disk yet (no fsync).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from portfolio.core.monitoring.queueing import RecordQueue

if TYPE_CHECKING:  # settings import nothing from here; only the annotation needs it
    from portfolio.core.settings import Settings

log = logging.getLogger(__name__)

# How long queued records wait for the writer at most while the queue is less than half full.
FLUSH_INTERVAL_S = 0.05
OUTCOMES = ("written", "sampled_out", "dropped_queue_full", "write_error")
# The writer gives the interpreter lock back after holding it this long (``_breathe``).
_SLICE_S = 0.001
# Written from an event loop (``attach``): a batch's records are serialised this long at a time.
_LOOP_SLICE_S = 0.002


class PredictionLog:
    """A process's prediction log writer (one per API app or CLI run).

    Args:
        directory: The log folder (a ``<service>`` folder is made inside it).
        service: The service's name.
        sample: Share of records logged (0 turns the log off: no thread, no file).
        max_bytes: Rotate to a new file once the current one is larger.
        queue_size: Records waiting for the writer at most (a request larger than that is
            still taken when nothing waits, so a big batch is never refused for its size alone).
        registry: Where the records counter is registered (the API's /metrics registry).
        retention_days: Delete this service's log files older than this (0: keep all).
    """

    def __init__(
        self,
        directory: Path,
        service: str,
        sample: float = 1.0,
        max_bytes: int = 64 << 20,
        queue_size: int = 10_000,
        registry: CollectorRegistry | None = None,
        retention_days: float = 0.0,
    ):
        self.folder = Path(directory) / service
        self.service = service
        self.sample = sample
        self.max_bytes = max_bytes
        self.records = Counter(
            "portfolio_prediction_log_records",
            "Scored records by what the prediction log did with them",
            ["model_service", "outcome"],
            registry=registry,
        )
        self._counters = {o: self.records.labels(service, o) for o in OUTCOMES}
        # Bounded in records, not requests: a batch of 1,000 costs as much memory as 1,000 requests.
        self._queue = RecordQueue(
            queue_size, self._counters["dropped_queue_full"], f"{service}: prediction log", FLUSH_INTERVAL_S
        )
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0  # bytes in the current file
        self._second_text: tuple[int, str] = (-1, "")  # the last whole second _stamp formatted
        # Start time first (files sort in time order), then what tells processes and logs apart.
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
        self._series = f"{service}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._part = itertools.count()
        # A record is kept when the hash of its id falls under the share: the same decision for
        # its champion and shadow lines, in every process.
        self._keep_below = int(sample * 2**32)
        self.retention_s = retention_days * 86400.0
        self._pruned_at = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # attach(): written from this loop
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self._slice_start = 0.0

    @classmethod
    def from_settings(
        cls, settings: Settings, service: str, registry: CollectorRegistry | None = None
    ) -> PredictionLog:
        """The writer configured by ``PORTFOLIO_PREDICTION_LOG_*`` (the API's and the CLI's).

        Args:
            settings: The process's settings (folder, sample, size, queue, retention).
            service: The service's name.
            registry: Where the records counter is registered (None: a private one).

        Returns:
            A writer; nothing is started until it is.
        """
        return cls(
            settings.resolved_prediction_log_dir,
            service,
            sample=settings.prediction_log_sample,
            max_bytes=settings.prediction_log_max_bytes,
            queue_size=settings.prediction_log_queue,
            registry=registry,
            retention_days=settings.prediction_log_retention_days,
        )

    @property
    def enabled(self) -> bool:
        return self.sample > 0

    def submit(
        self,
        request_id: str,
        model_version: str,
        inference: str,
        inputs: Mapping[str, Sequence[Any]],
        outputs: Sequence[Mapping[str, Any]],
        batch: bool,
        index: Sequence[int] | None = None,
        shadow: bool = False,
    ) -> None:
        """Queue one request's scored records (the hot path: by reference, no copy, no serialisation).

        Args:
            request_id: The request's id; a batch's records get ``<id>:<index>``.
            model_version: The version that scored them.
            inference: The predictor's inference path.
            inputs: Each field's values, in record order (not modified afterwards by the caller).
            outputs: One output dict per record, as answered.
            batch: Whether the records came as a batch (ids with an index).
            index: The records' indexes in the ids (default: their positions); the CLI gives
                the input rows'.
            shadow: The outputs are the challenger's, not the answer given (``shadow.py``).
        """
        if not self.enabled:
            return
        if self._thread is None and self._loop is None:
            self._start()
        self._queue.offer(
            (time.time(), request_id, model_version, inference, inputs, outputs, batch, index, shadow),
            len(outputs),
        )

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, flush and close the file (the API's shutdown; with an event
        loop attached, call it from the loop's thread)."""
        if self._loop is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._loop = None
            self._queue.on_hurry = None
            self._write_queued(budget_s=None)
            self._close_file()
            return
        if self._thread is None:
            return
        self._queue.stop()
        self._thread.join(timeout)
        self._thread = None

    # -- writing from the API's event loop -----------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write from ``loop`` instead of a thread of its own (the API, at startup; issue 33).

        Every ``FLUSH_INTERVAL_S`` (at once when the queue is more than half full) a callback on
        the loop serialises what was queued (~3 µs a record) and writes it in one call, at most
        ~2 ms of serialising at a time (the loop answers the requests waiting in between). A
        writer thread cost BankChurn's /predict ~10% of its requests a second: each time it woke
        it took the interpreter lock from the event loop and handed it back a few dozen times
        (0.2 context switches a request). The price: the loop itself waits for the write, a few
        tens of µs into the page cache, as it does for the access log's lines. Submitting from
        other threads (the shadow scorer) stays safe: the queue is.
        """
        if not self.enabled or self._thread is not None:
            return
        self._loop = loop
        self._queue.on_hurry = lambda: loop.call_soon_threadsafe(self._tick)
        self._timer = loop.call_later(FLUSH_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        if self._loop is None:
            return  # closed (a wake-up scheduled before close)
        if self._timer is not None:
            self._timer.cancel()
        more = self._write_queued(budget_s=_LOOP_SLICE_S)
        if self._file is not None and not more:
            self._file.flush()  # the queue was empty: what was written is in the OS now
        # Left over (the slice ran out): the rest after the requests waiting now.
        self._timer = self._loop.call_later(0 if more else FLUSH_INTERVAL_S, self._tick)

    def _write_queued(self, budget_s: float | None) -> bool:
        """Write queued items in queue order, for at most ``budget_s`` of serialising (None: all).

        Returns:
            Whether items are still queued because the budget ran out.
        """
        self._queue.woken()
        start = time.perf_counter()
        lines: list[bytes] = []
        records = 0
        more = False
        while (taken := self._queue.pop()) is not None:
            item, n = taken
            records += n
            lines.extend(self._lines(item))
            if budget_s is not None and time.perf_counter() - start > budget_s:
                more = not self._queue.empty()
                break
        try:
            if lines:
                self._append(lines)
        finally:
            self._queue.done(records)
        return more

    # -- the writer thread (the CLI, and an API before its loop is attached) ---------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._queue.stopping = False  # a log closed and used again
                self._thread = threading.Thread(
                    target=self._run, name=f"{self.service}-prediction-log", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            taken = self._queue.take()
            self._slice_start = time.perf_counter()
            for item, records in taken:
                try:
                    self._write(item)
                finally:
                    self._queue.done(records)
                self._breathe()
            if self._file is not None:
                self._file.flush()  # the queue was empty: what was written is in the OS now
            if self._queue.stopping and self._queue.empty():  # close(): all queued before it is written
                break
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _breathe(self) -> None:
        """Give the interpreter lock back once this thread has held it ``_SLICE_S`` (issue 33).
        Holding it through a whole wake-up's worth of records made every system call of the
        event loop (epoll, recv, send) hand the lock to this thread and wait for it again: a
        BankChurn worker answered 1,577 /predict a second with its event loop 73% busy, against
        3,674 with the log off. Giving it back after every request instead starved this thread
        under sustained load (each take-back waits up to the switch interval, 5 ms): in `make
        soak` (32 connections) the queue filled and a BankChurn worker grew 261 -> 406 MB."""
        now = time.perf_counter()
        if now - self._slice_start >= _SLICE_S:
            time.sleep(0)
            self._slice_start = time.perf_counter()

    def _write(self, item: tuple[Any, ...]) -> None:
        lines = self._lines(item, breathe=True)
        if lines:
            self._append(lines)

    def _lines(self, item: tuple[Any, ...], breathe: bool = False) -> list[bytes]:
        """A queued request's records as lines (those sampled out counted, not returned)."""
        ts, rid, version, inference, inputs, outputs, batch, index, shadow = item
        stamp = self._stamp(ts)
        if not batch and len(outputs) == 1 and self.sample >= 1.0:  # /predict's: the common case
            line = self._line(
                stamp, rid, version, inference, {n: c[0] for n, c in inputs.items()}, outputs[0], shadow
            )
            return [] if line is None else [line]
        names = list(inputs)
        columns = [inputs[n] for n in names]
        lines: list[bytes] = []
        skipped = 0
        for i, out in enumerate(outputs):
            if breathe and i % 64 == 63:
                self._breathe()  # the writer thread: a batch's records too
            record_id = f"{rid}:{i if index is None else index[i]}" if batch else rid
            if self.sample < 1.0 and zlib.crc32(record_id.encode()) >= self._keep_below:
                skipped += 1
                continue
            inputs_i = {n: c[i] for n, c in zip(names, columns, strict=True)}
            line = self._line(stamp, record_id, version, inference, inputs_i, out, shadow)
            if line is not None:
                lines.append(line)
        if skipped:
            self._counters["sampled_out"].inc(skipped)
        return lines

    def _line(
        self,
        stamp: str,
        record_id: str,
        version: str,
        inference: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        shadow: bool,
    ) -> bytes | None:
        """One record's JSON line (without its newline); None, counted as ``write_error`` and
        warned about, when a value cannot be written as JSON (an integer beyond 64 bits)."""
        record = {
            "ts": stamp,
            "request_id": record_id,
            "service": self.service,
            "model_version": version,
            "inference": inference,
            "inputs": inputs,
            "outputs": outputs,
            "shadow": shadow,
        }
        try:
            return orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError as exc:
            self._counters["write_error"].inc()
            log.warning("%s: prediction log line %s not written (%s)", self.service, record_id, exc)
            return None

    def _append(self, lines: list[bytes]) -> None:
        """Write lines to the current file in one call (counted written, or write_error)."""
        try:
            fh = self._current()
            data = b"\n".join(lines) + b"\n"
            fh.write(data)
            self._size += len(data)
            self._counters["written"].inc(len(lines))
        except OSError as exc:
            self._counters["write_error"].inc(len(lines))
            log.warning("%s: prediction log not written (%s)", self.service, exc)

    def _stamp(self, ts: float) -> str:
        """``ts`` as ISO 8601 UTC with microseconds, as ``datetime.isoformat`` writes it; the
        date and time of day are formatted once per second (~0.5 instead of ~3 µs a record).
        The second and its text are kept as one tuple, so that no caller sees one without the
        other."""
        second = int(ts)
        micro = round((ts - second) * 1e6)
        if micro >= 1_000_000:  # rounds up into the next second
            second, micro = second + 1, 0
        cached, text = self._second_text
        if second != cached:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second_text = (second, text)
        return f"{text}.{micro:06d}+00:00"

    def _current(self) -> IO[bytes]:
        # The size is counted, not asked of the file: tell() is a system call per write.
        if self._file is not None and self._size >= self.max_bytes:
            self._file.close()
            self._file = None
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path = self.folder / f"{self._series}-{next(self._part):04d}.jsonl"
            self._file = self._path.open("ab")
            self._size = self._file.tell()
            self._pruned_at = 0.0  # a new file: prune now
        if self.retention_s > 0 and time.time() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.time()
            prune_log(self.folder.parent, self.service, self.retention_s / 86400.0, keep=self._path)
        return self._file


PRUNE_EVERY_S = 3600.0


def prune_log(
    directory: Path,
    service: str,
    retention_days: float,
    now: float | None = None,
    keep: Path | None = None,
) -> list[Path]:
    """Delete a service's prediction log files last modified more than ``retention_days`` ago
    (labels and reports stay; a file another process deletes first is skipped).

    Args:
        directory: The prediction log folder.
        service: The service's name.
        retention_days: Age limit in days (> 0).
        now: The current time (seconds since the epoch; default: now).
        keep: A file never deleted (the caller's own open file, however long it was idle).

    Returns:
        The deleted files.
    """
    limit = (time.time() if now is None else now) - retention_days * 86400.0
    deleted = []
    for path in (Path(directory) / service).glob(f"{service}-*.jsonl"):
        if path == keep:
            continue
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                deleted.append(path)
        except FileNotFoundError:
            continue
    if deleted:
        log.info(
            "%s: deleted %d prediction log file(s) older than %g days", service, len(deleted), retention_days
        )
    return deleted


def read_log(directory: Path, service: str) -> Iterator[dict[str, Any]]:
    """Every logged record of a service, file by file (a torn last line of a crashed process is
    skipped: it was never complete).

    Args:
        directory: The prediction log folder.
        service: The service's name.

    Returns:
        The records as dicts, in file order.
    """
    for path in sorted((Path(directory) / service).glob(f"{service}-*.jsonl")):
        with path.open("rb") as fh:
            for line in fh:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("%s: skipped an incomplete line", path.name)

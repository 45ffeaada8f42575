"""The feedback loop's store: every decision and outcome, appended off the request path.

The request thread only appends to a bounded in-memory buffer (a deque: no lock, no wake-up of
the writer, so a payment is never held up by logging; when the buffer is full the record is
dropped and counted). A background thread wakes every ``flush_seconds``, builds the records it
was handed lazily (``append_lazy``: the decision's dict is assembled here, not on the request
path), encodes them with msgspec and appends JSON lines to segment files
``decisions-<start>-<pid>-<n>.jsonl`` under ``<state_dir>/decisions/`` with one write per batch.
`close()` drains the buffer on graceful shutdown. A crash can at worst lose the last
``flush_seconds`` of records and leave a partial last line, which `read_records` skips.
The next training run and the notebooks read the records with `read_records` / `read_frame`;
`smartrouter decisions ship` loads closed segments into the warehouse.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec

log = logging.getLogger("smartrouter.routing.decision_log")

# msgspec encodes ~10x faster than json.dumps: the writer thread shares the GIL with requests
_encoder = msgspec.json.Encoder(enc_hook=str)
SEGMENT_GLOB = "decisions-*.jsonl"
_CHUNK = 64  # records built or encoded between two releases of the GIL


class DecisionLog:
    """Bounded, non-blocking, append-only JSONL log written by one background thread."""

    def __init__(self, directory: str | Path, queue_size: int = 20_000, segment_records: int = 200_000,
                 flush_seconds: float = 0.5) -> None:
        self.directory = Path(directory)
        self.queue_size = queue_size
        self.segment_records = segment_records
        self.flush_seconds = flush_seconds
        # items are (build, args): the record is build(*args), evaluated by the writer
        self._buffer: deque[tuple[Callable[..., dict[str, Any]] | None, Any]] = deque()
        self._wake = threading.Event()  # set by close(), or by append() when the buffer is half full
        self._stopping = False
        self.dropped = 0
        self.written = 0
        self._thread: threading.Thread | None = None
        self._file = None
        self._in_segment = 0
        self._segment_no = 0
        self.error: str | None = None

    # ------------------------------------------------------------------ request path
    def append(self, record: dict[str, Any]) -> bool:
        """Buffer one record; False (and counted in ``dropped``) when the buffer is full."""
        return self.append_lazy(None, record)

    def append_lazy(self, build: Callable[..., dict[str, Any]] | None, *args: Any) -> bool:
        """Buffer ``build(*args)`` to be evaluated by the writer thread (``build`` None: ``args[0]`` is the record).

        The arguments must not be mutated afterwards. False (and counted) when the buffer is full.
        """
        # len() then append() is not atomic across threads: at worst a few records past the bound
        if len(self._buffer) >= self.queue_size:
            self.dropped += 1
            return False
        self._buffer.append((build, args))
        if len(self._buffer) * 2 >= self.queue_size and not self._wake.is_set():
            self._wake.set()  # a burst: drain now rather than at the next tick (rare, so cheap)
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------------ writer
    def start(self) -> "DecisionLog":
        """Start the writer thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Drain the buffer, flush and close the segment (graceful shutdown)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    def _open_segment(self):
        self._segment_no += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"decisions-{stamp}-{os.getpid()}-{self._segment_no:04d}.jsonl"
        self._in_segment = 0
        return open(self.directory / name, "ab")

    def _drain(self) -> list[dict[str, Any]]:
        buffer, batch = self._buffer, []
        for i in range(len(buffer)):
            if i and i % _CHUNK == 0:
                # this thread shares the GIL with the request handlers: hand it back between chunks
                # so a request never waits a whole switch interval (5 ms) behind a batch of records
                time.sleep(0)
            build, args = buffer.popleft()
            if build is None:
                batch.append(args[0])
                continue
            try:
                batch.append(build(*args))
            except Exception:  # noqa: BLE001 - one bad record must not stop the log
                self.dropped += 1
                log.exception("decision-log record could not be built")
        return batch

    def _write(self, batch: list[dict]) -> None:
        i = 0
        while i < len(batch):
            if self._file is None or self._in_segment >= self.segment_records:
                if self._file is not None:
                    self._file.close()
                self._file = self._open_segment()
            chunk = batch[i : i + min(_CHUNK, self.segment_records - self._in_segment)]
            self._file.write(_encoder.encode_lines(chunk))
            time.sleep(0)  # as in _drain: let requests in between chunks
            self._in_segment += len(chunk)
            self.written += len(chunk)
            i += len(chunk)
        if self._file is not None:
            self._file.flush()

    def _run(self) -> None:
        first = True
        while True:
            if not first:  # the first pass drains what was buffered before start()
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
            first = False
            stopping = self._stopping
            batch = self._drain()
            if batch:
                try:
                    self._write(batch)
                except (OSError, TypeError, ValueError) as exc:  # keep serving; say so in /readyz and metrics
                    self.dropped += len(batch)
                    self.error = f"cannot write decision log in {self.directory}: {exc}"
                    log.error(self.error)
            if stopping and not self._buffer:
                break
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(directory: str | Path, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record in the log's segments, oldest segment first (``kind``: 'decision' / 'outcome')."""
    directory = Path(directory)
    for path in sorted(directory.glob(SEGMENT_GLOB)):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a partial last line after a crash
                    continue
                if kind is None or rec.get("kind") == kind:
                    yield rec


def read_frame(directory: str | Path, kind: str | None = None):
    """The log as a pandas DataFrame (for notebooks and the next training run)."""
    import pandas as pd

    return pd.DataFrame.from_records(list(read_records(directory, kind)))

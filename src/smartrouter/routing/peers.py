"""Outcome sharing between the service's worker processes on one host.

With several uvicorn workers, the merchant's router sends each outcome to whichever worker
accepts the connection, but every worker needs every outcome: processor health (a DOWN
processor must be DOWN in every worker), the exploration posteriors and the online features
are all learned from them. Each worker binds a Unix datagram socket ``<pid>.sock`` in a shared
folder (``<state_dir>/peers/``) and sends small msgspec-encoded messages to the others:

- ``outcome``: an outcome already resolved to its segment and BIN; the receiver applies it.
- ``forward``: an outcome whose request id names another worker (the one that decided, and so
  knows the payment's segment and BIN); that worker resolves, applies and broadcasts it.
- ``reload``: `/admin/reload` reached one worker; the others reload too.

Datagrams on a local socket are delivered whole or not at all; a send never blocks (a full peer
buffer drops the message and counts it, so a slow worker can never stall a payment). Sockets
of workers that exited are skipped and removed. With one worker there is no peer and nothing
is sent.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

log = logging.getLogger("smartrouter.routing.peers")

OUTCOME = "outcome"
FORWARD = "forward"
RELOAD = "reload"
_REFRESH_SECONDS = 1.0  # how often the list of peers is re-read from the folder
_MAX_DATAGRAM = 8192


class PeerMessage(msgspec.Struct, array_like=True, omit_defaults=True):
    """One message between workers (encoded as a compact JSON array)."""

    kind: str
    sender: int
    processor: str | None = None
    status: str | None = None
    error_code: str | None = None
    at: float | None = None
    request_id: str | None = None
    segment: list | None = None
    card_bin: str | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PeerMessage).decode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class PeerBus:
    """This worker's end of the bus: `publish` to every peer, `send` to one, `receive` pending messages."""

    def __init__(self, directory: str | Path, pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self.path = self.directory / f"{self.pid}.sock"
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self._peers: dict[int, str] = {}
        self._peers_read = 0.0
        self._dir_mtime: int | None = None
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "PeerBus":
        """Bind this worker's socket (replacing a stale one left by a process with our pid)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if len(str(self.path)) > 100:  # AF_UNIX paths are limited to ~108 bytes
            raise OSError(errno.ENAMETOOLONG, f"peer socket path {self.path} is too long; use a shorter SMARTROUTER_STATE_DIR")
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # room for bursts of outcomes
        sock.bind(str(self.path))
        self._sock = sock
        self._refresh(force=True)
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)

    def fileno(self) -> int:
        if self._sock is None:
            raise RuntimeError("peer bus is not open")
        return self._sock.fileno()

    # ------------------------------------------------------------------ peers
    def _refresh(self, force: bool = False) -> None:
        """Re-read the peers every ``_REFRESH_SECONDS``, and at once when the folder changed: a worker
        binding or removing its socket changes the folder's mtime. Without that a worker (re)started
        within the last second got none of the outcomes its peers took in that second: a kill -9's
        replacement could take over a DEGRADED view of a processor its peer already held DOWN."""
        now = time.monotonic()
        try:
            mtime = os.stat(self.directory).st_mtime_ns  # ~1 us: cheap beside a datagram send
        except OSError:
            mtime = None
        if not force and now - self._peers_read < _REFRESH_SECONDS and mtime == self._dir_mtime:
            return
        self._peers_read = now
        self._dir_mtime = mtime  # read before the listing: a change during it triggers another read
        peers: dict[int, str] = {}
        try:
            entries = list(self.directory.glob("*.sock"))
        except OSError:
            entries = []
        for path in entries:
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid:
                continue
            if not _alive(pid):  # a worker that exited without cleaning up
                path.unlink(missing_ok=True)
                continue
            peers[pid] = str(path)
        self._peers = peers

    @property
    def peers(self) -> list[int]:
        self._refresh()
        return sorted(self._peers)

    def has_peer(self, pid: int) -> bool:
        self._refresh()
        return pid in self._peers

    # ------------------------------------------------------------------ send / receive
    def _sendto(self, pid: int, data: bytes) -> bool:
        if self._sock is None:
            return False
        path = self._peers.get(pid)
        if path is None:
            return False
        try:
            self._sock.sendto(data, path)
            self.sent += 1
            return True
        except BlockingIOError:  # the peer's buffer is full: drop rather than wait
            self.dropped += 1
        except (ConnectionRefusedError, FileNotFoundError):  # the peer went away
            self._peers.pop(pid, None)
            self.dropped += 1
        except OSError as exc:
            self.dropped += 1
            log.warning("peer %d: %s", pid, exc)
        return False

    def publish(self, message: PeerMessage) -> int:
        """Send ``message`` to every peer; returns how many took it."""
        self._refresh()
        if not self._peers:
            return 0
        data = _encode(message)
        return sum(self._sendto(pid, data) for pid in list(self._peers))

    def send(self, pid: int, message: PeerMessage) -> bool:
        """Send ``message`` to one peer; False if it is gone or its buffer is full."""
        self._refresh()
        return self._sendto(pid, _encode(message))

    def receive(self) -> list[PeerMessage]:
        """Every message waiting on the socket (never blocks)."""
        out: list[PeerMessage] = []
        if self._sock is None:
            return out
        while True:
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            try:
                out.append(_decode(data))
                self.received += 1
            except msgspec.DecodeError:
                log.warning("peer bus: undecodable message of %d bytes ignored", len(data))
        return out


def message(kind: str, sender: int, **fields: Any) -> PeerMessage:
    """A message; ``segment`` may be given as a tuple."""
    seg = fields.get("segment")
    if seg is not None:
        fields["segment"] = list(seg)
    return PeerMessage(kind, sender, **fields)


def attach(bus: PeerBus, loop: Any, handle: Callable[[PeerMessage], None]) -> None:
    """Deliver the bus's messages to ``handle`` on ``loop``'s thread (no locks needed around the router)."""

    def on_readable() -> None:
        for msg in bus.receive():
            try:
                handle(msg)
            except Exception:  # noqa: BLE001 - one bad message must not stop the bus
                log.exception("peer message %s from %d failed", msg.kind, msg.sender)

    loop.add_reader(bus.fileno(), on_readable)


def detach(bus: PeerBus, loop: Any) -> None:
    try:
        loop.remove_reader(bus.fileno())
    except (RuntimeError, ValueError, OSError):
        pass

"""The memory shards' raw-bytes gather: little-endian int64 slot ids in, float32 value rows out.

Each ``MemoryShardN`` service mounts ``raw_gather_app`` at ``RAW_MOUNT`` beside its BentoML ``gather``
API, and the ranker's memory reads call it with ``RawShardClient``: a blocking keep-alive ``http.client``
connection per calling thread, to the address BentoML gave the dependency (a unix socket under
``bentoml serve``, ``http://host:port`` on a cluster). A call then costs two byte copies on each side,
where the API pickles a numpy array into a pydantic model and validates it, and the calling thread sends
it itself instead of handing a coroutine to the server's event loop and waiting for it. The shard's
server answers the route ahead of BentoML's middleware (``dispatch_first``, used by
``longrec.serving.raw_route_service.RawRouteFirst``).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote, urlparse

import numpy as np

from longrec.serving.service_support import send_json_error

__all__ = [
    "RAW_GATHER_PATH",
    "RAW_MOUNT",
    "RawShardClient",
    "ShardCallError",
    "ShardUnavailable",
    "dispatch_first",
    "raw_gather_app",
]

RAW_MOUNT = "/raw"
RAW_GATHER_PATH = f"{RAW_MOUNT}/gather"
SLOT_DTYPE = np.dtype("<i8")
VALUE_DTYPE = np.dtype("<f4")
# A request's distinct slots per shard: ~2,000 at L=1000; at most (10,000 history events + 1,000
# candidates) x heads x K, 352,000 at K=32. A body of more ids is refused before anything is allocated.
MAX_SLOTS = 1 << 20


class ShardCallError(RuntimeError):
    """A shard answered a gather with an error status (the message carries its reason)."""


class ShardUnavailable(RuntimeError):
    """Raised by a shard's lookup while it cannot answer (its file failed to load): the route says 503."""


def raw_gather_app(
    lookup: Callable[[np.ndarray], np.ndarray],
    max_slots: int = MAX_SLOTS,
    observe: Callable[[int, float], None] | None = None,
):
    """An ASGI app answering ``POST .../gather``: the body is the slot ids (``SLOT_DTYPE``), the answer
    the rows ``lookup(ids)`` returns, as ``VALUE_DTYPE`` bytes, with their width in ``x-value-dim``.
    A malformed body or slots outside the shard (``ValueError`` from ``lookup``) answer 400,
    ``ShardUnavailable`` 503, each with a JSON ``{"error": ...}`` naming the problem. ``observe(status,
    seconds)``, if given, sees every answered request (the shard's own latency metric)."""

    max_bytes = max_slots * SLOT_DTYPE.itemsize

    async def answer(scope, receive, send) -> int:
        """Answer one request; its status, or 0 when the client went away first."""
        if not scope["path"].endswith("/gather"):
            await send_json_error(send, 404, f"no route {scope['path']}: POST {RAW_GATHER_PATH}")
            return 404
        if scope["method"] != "POST":
            await send_json_error(send, 405, f"{RAW_GATHER_PATH} takes POST, not {scope['method']}")
            return 405
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return 0
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                await send_json_error(send, 413, f"body larger than {max_slots} slot ids")
                return 413
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if len(body) % SLOT_DTYPE.itemsize:
            await send_json_error(send, 400, f"body of {len(body)} bytes is not little-endian int64 slot ids")
            return 400
        try:
            rows = lookup(np.frombuffer(body, dtype=SLOT_DTYPE))
        except ShardUnavailable as error:
            await send_json_error(send, 503, str(error))
            return 503
        except ValueError as error:
            await send_json_error(send, 400, str(error))
            return 400
        except Exception as error:  # answer it: an ASGI app that raises leaves the caller to its timeout
            await send_json_error(send, 500, f"{type(error).__name__}: {error}")
            return 500
        rows = np.ascontiguousarray(rows, dtype=VALUE_DTYPE)
        payload = rows.tobytes()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-value-dim", str(rows.shape[1] if rows.ndim == 2 else 0).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return 200

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        status = await answer(scope, receive, send)
        if observe is not None and status:
            observe(status, time.perf_counter() - started)

    return app


def dispatch_first(prefix: str, direct, app):
    """An ASGI app that hands HTTP requests for ``prefix`` and the paths below it to ``direct`` and
    everything else (other routes, lifespan events) to ``app``. A memory shard serves its raw route this
    way, ahead of BentoML's middleware (see ``serving/service.py``)."""
    below = prefix.rstrip("/") + "/"

    async def dispatch(scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["path"] == prefix or scope["path"].startswith(below)):
            await direct(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RawShardClient:
    """Blocking gathers from one shard's raw route, one keep-alive connection per calling thread.

    ``url`` is the dependency's address as BentoML resolves it: ``file:///path.sock`` (a unix socket),
    ``tcp://host:port``, or ``http(s)://host:port[/prefix]``. Every socket operation times out after ``timeout_s``
    (``TimeoutError``); a failed call drops its connection, so the next call connects afresh.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        parsed = urlparse(url)
        self.path = RAW_GATHER_PATH
        if parsed.scheme == "file":
            socket_path = unquote(parsed.path)
            self._connect = lambda: _UnixConnection(socket_path, timeout=timeout_s)
        elif parsed.scheme in ("tcp", "http", "https"):
            if not parsed.hostname:
                raise ValueError(f"shard url {url!r} names no host")
            secure = parsed.scheme == "https"
            host, port = parsed.hostname, parsed.port or (443 if secure else 80)
            kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
            self._connect = lambda: kind(host, port, timeout=timeout_s)
            if parsed.scheme != "tcp":  # a shard behind a path prefix (a gateway) keeps it
                self.path = parsed.path.rstrip("/") + RAW_GATHER_PATH
        else:
            raise ValueError(f"shard url {url!r}: expected file://, tcp://, http:// or https://")
        self.url = url
        self.timeout_s = timeout_s
        self._local = threading.local()

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """Value rows [N, d_v] (float32, read-only) of the global slot ids ``slots`` (all in this shard)."""
        ids = np.ascontiguousarray(slots, dtype=SLOT_DTYPE).reshape(-1)
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        try:
            connection.request(
                "POST",
                self.path,
                body=ids.tobytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            answer = connection.getresponse()
            payload = answer.read()
        except BaseException:
            connection.close()
            self._local.connection = None
            raise
        if answer.status != 200:
            try:
                reason = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                reason = payload[:200].decode("utf-8", "replace")
            raise ShardCallError(f"shard at {self.url} answered {answer.status}: {reason}")
        width = answer.getheader("x-value-dim", "")
        rows = np.frombuffer(payload, dtype=VALUE_DTYPE)
        if not width.isdigit() or rows.size != ids.size * int(width):
            raise ShardCallError(
                f"shard at {self.url} answered {rows.size} values of width {width!r} for {ids.size} slots"
            )
        return rows.reshape(ids.size, int(width))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

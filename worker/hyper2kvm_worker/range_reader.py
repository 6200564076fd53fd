"""An nbdkit plugin (run by nbdkit's own Python) serving one file over HTTP(S): large range
requests, several at once, ahead of sequential readers, each block fetched once for every
reader.

Why not nbdkit's curl plugin: in the nbdkit this worker runs on (Debian 12's 1.32) it serves
one request at a time per connection, so each 64 KiB grain qemu reads costs a round trip
and the link sits idle (a tenth of it at 10 ms); its readahead, scan and cache filters need
a parallel plugin to prefetch. Here a read starts fetches of the next `ahead` blocks of
`block` bytes on as many connections, and the blocks are kept until every connected
reader has gone past them: the conversion and the digest of the same source (two NBD
connections) then share one transfer, and the reader ahead waits for the other rather
than evict what it has yet to read. The reader furthest behind never waits, so neither
can wait on the other.

What it asks of the server is bounded like curl's: the one URL it was given (no
redirects: http.client follows none), GET with a Range, and a 206 whose Content-Range is
exactly the bytes asked; anything else fails the read (nbdkit's retry filters above
repeat it). Stdlib only: nbdkit's Python is the system's, not the worker's environment.
"""

from __future__ import annotations

import base64
import http.client
import pathlib
import re
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

API_VERSION = 2
MiB = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
BLOCK = 4 * MiB  # per request: 64 KiB grains would cost a round trip each
AHEAD = 8  # blocks fetched at once ahead of a reader: enough to fill 1 Gbit/s at 10 ms
CACHE = 48  # blocks kept (192 MiB): two readers this far apart still share one transfer
WAIT_LIMIT_SECONDS = 30.0  # a reader ahead waits at most this long for the one behind


class FetchError(OSError):
    pass


class RangeFetcher:
    """GET of one byte range of one URL, on a connection of the calling thread's own."""

    def __init__(self, url: str, size: int, headers: dict[str, str],
                 context: ssl.SSLContext | None, timeout: float) -> None:  # fmt: skip
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self._parts = parts
        self._target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._size = size
        self._headers = headers
        self._context = context
        self._timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            host, port = self._parts.hostname or "", self._parts.port
            if self._parts.scheme == "https":
                connection = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def fetch(self, start: int, length: int) -> bytes:
        end = start + length - 1
        try:
            connection = self._connection()
            headers = {**self._headers, "Range": f"bytes={start}-{end}"}
            connection.request("GET", self._target, headers=headers)
            response = connection.getresponse()
            if response.status != 206:
                response.read(64 << 10)
                raise FetchError(
                    f"HTTP {response.status} {response.reason} for bytes {start}-{end}"
                )
            match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
            total = match and match[3]
            if (
                not match
                or (int(match[1]), int(match[2])) != (start, end)
                or (total != "*" and int(str(total)) != self._size)
            ):
                raise FetchError(f"the server sent other bytes than {start}-{end} of {self._size}")
            data = response.read(length)
            if len(data) != length or response.read(1):
                raise FetchError(f"bytes {start}-{end}: the body is not {length} bytes long")
            return data
        except (OSError, http.client.HTTPException) as error:
            self._drop()  # a connection in an unknown state is never reused
            if isinstance(error, FetchError):
                raise
            raise FetchError(f"bytes {start}-{end}: {error}") from error


class BlockCache:
    """Blocks of the file, fetched once, kept until every open reader has gone past them."""

    def __init__(self, size: int, block: int, ahead: int, capacity: int,
                 fetch: Callable[[int, int], bytes]) -> None:  # fmt: skip
        self.size, self.block, self.ahead, self.capacity = (
            size,
            block,
            ahead,
            max(capacity, ahead + 2),
        )
        self._fetch = fetch
        self._blocks: OrderedDict[int, Future[bytes]] = OrderedDict()
        self._readers: dict[int, int] = {}  # reader -> the highest block it has read
        self._next_reader = 0
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="range")

    def open_reader(self) -> int:
        with self._changed:
            self._next_reader += 1
            self._readers[self._next_reader] = -1
            return self._next_reader

    def close_reader(self, reader: int) -> None:
        with self._changed:
            self._readers.pop(reader, None)
            self._evict()
            self._changed.notify_all()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def read(self, reader: int, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(reader, memoryview(buffer), offset)
        return bytes(buffer)

    def read_into(self, reader: int, buffer: memoryview, offset: int) -> None:
        """Fill `buffer` with the file's bytes at `offset`. The bookkeeping (prefetch,
        eviction, waking the waiting) runs when a reader enters a new block, not for each
        64 KiB read within one."""
        length = len(buffer)
        first, last = offset // self.block, (offset + length - 1) // self.block
        with self._changed:
            highest = self._readers.get(reader, -1)
            cached = [self._blocks.get(index) for index in range(first, last + 1)]
            if last <= highest and all(f is not None and f.done() for f in cached):
                wanted = [(first + i, f) for i, f in enumerate(cached) if f is not None]
            else:
                wanted = self._advance(reader, first, last, highest)
        for index, future in wanted:
            data = self._result(index, future)
            start = index * self.block
            lo, hi = max(offset, start), min(offset + length, start + len(data))
            buffer[lo - offset : hi - offset] = memoryview(data)[lo - start : hi - start]

    def _result(self, index: int, future: Future[bytes]) -> bytes:
        """The block's bytes. A prefetch that failed (the link dropped while it was ahead)
        is fetched again at once; only a fetch made for this read fails it, and is not kept."""
        try:
            return future.result()
        except FetchError:
            with self._changed:
                if self._blocks.get(index) is future:
                    del self._blocks[index]
                future = self._get(index)
        try:
            return future.result()
        except BaseException:
            with self._changed:
                if self._blocks.get(index) is future:
                    del self._blocks[index]  # the next read fetches it anew
            raise

    def _advance(
        self, reader: int, first: int, last: int, highest: int
    ) -> list[tuple[int, Future[bytes]]]:
        """A read that fetches or moves a reader on: wait for room, fetch what is missing,
        prefetch, evict, wake the waiting. Called with the lock held."""
        self._wait_for_room(reader, first)
        wanted = [(index, self._get(index)) for index in range(first, last + 1)]
        # Ahead of a reader that streams: past the first block, at its front, and on from
        # the block before. A look at the header and tables (qemu-img info, check), or a
        # jump over a hole to a small island of data, prefetches nothing.
        streaming = first - 1 in self._blocks
        if highest >= 1 and first >= highest - self.ahead and streaming:
            pending = self._pending()
            for index in range(last + 1, min(last + 1 + self.ahead, self._count())):
                if pending >= self.capacity:
                    break
                if index not in self._blocks:
                    self._get(index)
                    pending += 1
        if reader in self._readers:
            self._readers[reader] = max(highest, last)
        self._evict()
        self._changed.notify_all()
        return wanted

    def _count(self) -> int:
        return (self.size + self.block - 1) // self.block

    def _get(self, index: int) -> Future[bytes]:
        future = self._blocks.get(index)
        if future is None:
            start = index * self.block
            length = min(self.block, self.size - start)
            future = self._pool.submit(self._fetch, start, length)
            self._blocks[index] = future
        else:
            self._blocks.move_to_end(index)
        return future

    def _wait_for_room(self, reader: int, first: int) -> None:
        """A reader ahead of another waits while the cache is full of blocks the other has
        yet to read; the reader furthest behind never waits."""
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while (
            first not in self._blocks
            and self._pending() >= self.capacity
            and self._readers.get(reader, -1) > min(self._readers.values(), default=-1)
            and time.monotonic() < deadline
        ):
            self._changed.wait(0.5)

    def _behind(self) -> int:
        """The block the reader furthest behind has reached (every block before it is passed)."""
        return min(self._readers.values(), default=1 << 62)

    def _pending(self) -> int:
        """Blocks some reader has yet to pass: what `capacity` bounds."""
        behind = self._behind()
        return sum(1 for index in self._blocks if index >= behind)

    def _evict(self) -> None:
        """Past `capacity`, blocks every reader has passed go, oldest first, but the first (a
        VMDK's header and tables, read again); past twice `capacity`, the least recently
        used go too. Passed blocks stay while there is room: one reader may serve several
        clients (qemu-nbd under libguestfs and a conversion)."""
        behind = self._behind()
        passed = sorted(i for i in self._blocks if 0 < i < behind and self._blocks[i].done())
        for index in passed[: max(0, len(self._blocks) - self.capacity)]:
            del self._blocks[index]
        while len(self._blocks) > 2 * self.capacity:
            oldest = next((i for i, f in self._blocks.items() if i and f.done()), None)
            if oldest is None:
                return
            del self._blocks[oldest]


# ----------------------------------------------------------------------- nbdkit callbacks

_config: dict[str, str] = {}
_cache: BlockCache | None = None


def config(key: str, value: str) -> None:
    known = {"url", "size", "block", "ahead", "cache", "ca-file", "insecure", "user",
             "password-file", "cookie-file", "timeout", "protocols"}  # fmt: skip
    if key not in known:
        raise ValueError(f"unknown parameter {key!r}")
    _config[key] = value


def _read_secret(path: str) -> str:
    return pathlib.Path(path).read_text(encoding="utf-8").strip()  # `open` is nbdkit's here


def config_complete() -> None:
    global _cache
    url, size = _config.get("url"), int(_config.get("size", "-1"))
    if not url or size < 0:
        raise ValueError("url= and size= are required")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _config.get("protocols", "http,https").split(","):
        raise ValueError(f"{scheme} is not an allowed protocol here")
    headers = {"User-Agent": "hyper2kvm", "Accept-Encoding": "identity"}
    if "user" in _config:
        password = _read_secret(_config["password-file"]) if "password-file" in _config else ""
        token = base64.b64encode(f"{_config['user']}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if "cookie-file" in _config:
        headers["Cookie"] = _read_secret(_config["cookie-file"])
    context = None
    if scheme == "https":
        context = ssl.create_default_context(cafile=_config.get("ca-file"))
        if _config.get("insecure") == "true":  # a pinned certificate, checked by the caller
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    fetcher = RangeFetcher(url, size, headers, context, float(_config.get("timeout", "60")))
    _cache = BlockCache(
        size=size,
        block=int(_config.get("block", str(BLOCK))),
        ahead=int(_config.get("ahead", str(AHEAD))),
        capacity=int(_config.get("cache", str(CACHE))),
        fetch=fetcher.fetch,
    )


def thread_model() -> Any:
    import nbdkit  # type: ignore[import-not-found]  # only inside nbdkit

    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly: bool) -> int:  # nbdkit's callback names
    assert _cache is not None
    return _cache.open_reader()


def close(handle: int) -> None:
    assert _cache is not None
    _cache.close_reader(handle)


def get_size(handle: int) -> int:
    assert _cache is not None
    return _cache.size


def can_multi_conn(handle: int) -> bool:
    return True  # read-only: every connection sees the same bytes


def can_write(handle: int) -> bool:
    return False


def pread(handle: int, buf: bytearray, offset: int, flags: int) -> None:
    assert _cache is not None
    _cache.read_into(handle, memoryview(buf), offset)


def unload() -> None:
    if _cache is not None:
        _cache.close()

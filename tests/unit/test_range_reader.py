"""The HTTP range reader's block cache: one fetch per block for every reader, a failed fetch
never kept, and two readers that can never wait on each other."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hyper2kvm_worker.range_reader import BlockCache, FetchError, RangeFetcher

BLOCK = 1024
SIZE = 64 * BLOCK + 100  # a short last block
CONTENT = bytes(i % 251 for i in range(SIZE))


class Source:
    """Bytes served by block, counting fetches, failing the first `fail` of one block."""

    def __init__(self, fail_block: int | None = None, fail: int = 0) -> None:
        self.fetches: Counter[int] = Counter()
        self._fail_block, self._fail = fail_block, fail
        self._lock = threading.Lock()

    def fetch(self, start: int, length: int) -> bytes:
        with self._lock:
            self.fetches[start // BLOCK] += 1
            if start // BLOCK == self._fail_block and self._fail > 0:
                self._fail -= 1
                raise FetchError("connection reset")
        return CONTENT[start : start + length]


def cache(source: Source, ahead: int = 4, capacity: int = 8) -> BlockCache:
    return BlockCache(size=SIZE, block=BLOCK, ahead=ahead, capacity=capacity, fetch=source.fetch)


def read_all(blocks: BlockCache, reader: int, piece: int) -> bytes:
    return b"".join(
        blocks.read(reader, offset, min(piece, SIZE - offset)) for offset in range(0, SIZE, piece)
    )


def test_reads_across_blocks_return_exactly_the_bytes_asked() -> None:
    blocks = cache(Source())
    reader = blocks.open_reader()
    assert blocks.read(reader, BLOCK - 10, 30) == CONTENT[BLOCK - 10 : BLOCK + 20]
    assert blocks.read(reader, SIZE - 50, 50) == CONTENT[-50:]
    assert read_all(blocks, reader, 700) == CONTENT


def test_two_readers_at_once_fetch_every_block_once() -> None:
    """The conversion and the digest read the same source: one transfer serves both, the
    reader ahead waiting for the one behind instead of evicting what it has yet to read."""
    source = Source()
    blocks = cache(source, ahead=2, capacity=4)
    readers = [blocks.open_reader(), blocks.open_reader()]
    results: dict[int, bytes] = {}

    def run(reader: int, piece: int) -> None:
        results[reader] = read_all(blocks, reader, piece)

    threads = [
        threading.Thread(target=run, args=(r, p)) for r, p in zip(readers, (256, 4096), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {readers[0]: CONTENT, readers[1]: CONTENT}
    assert set(source.fetches.values()) == {1}, source.fetches
    assert len(source.fetches) == -(-SIZE // BLOCK)


def test_a_reader_alone_is_never_held_up_by_a_full_cache() -> None:
    source = Source()
    blocks = cache(source, ahead=2, capacity=4)
    reader = blocks.open_reader()
    assert read_all(blocks, reader, BLOCK) == CONTENT
    assert max(source.fetches.values()) == 1


def test_a_failed_fetch_is_made_again_at_once_and_a_second_failure_is_not_kept() -> None:
    """A block whose fetch failed (a prefetch when the link dropped) is fetched again by the
    read that needs it; when that fails too the read fails, and the next read tries anew."""
    source = Source(fail_block=3, fail=1)
    blocks = cache(source, ahead=1)
    reader = blocks.open_reader()
    assert blocks.read(reader, 3 * BLOCK, 10) == CONTENT[3 * BLOCK : 3 * BLOCK + 10]
    assert source.fetches[3] == 2

    source = Source(fail_block=3, fail=2)
    blocks = cache(source, ahead=1)
    reader = blocks.open_reader()
    with pytest.raises(FetchError):
        blocks.read(reader, 3 * BLOCK, 10)
    assert blocks.read(reader, 3 * BLOCK, 10) == CONTENT[3 * BLOCK : 3 * BLOCK + 10]
    assert source.fetches[3] == 3


def test_a_closed_reader_no_longer_holds_blocks() -> None:
    source = Source()
    blocks = cache(source, ahead=1, capacity=3)
    gone = blocks.open_reader()
    blocks.read(gone, 0, 10)
    blocks.close_reader(gone)
    reader = blocks.open_reader()
    assert read_all(blocks, reader, BLOCK) == CONTENT  # no wait for the reader that left


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve_bytes(status: int, content_range: str | None) -> _Server:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = CONTENT[:100]
            self.send_response(status)
            if content_range:
                self.send_header("Content-Range", content_range)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("status", "content_range", "said"),
    [
        (200, None, "HTTP 200"),  # the server ignored the range: the whole file would follow
        (206, "bytes 1-100/6636", "other bytes"),
        (206, "bytes 0-99/5", "other bytes"),  # another file's size
        (503, None, "HTTP 503"),
    ],
)
def test_a_response_other_than_the_asked_range_fails_the_read(
    status: int, content_range: str | None, said: str
) -> None:
    server = serve_bytes(status, content_range)
    try:
        port = server.server_address[1]
        fetcher = RangeFetcher(f"http://127.0.0.1:{port}/disk", SIZE, {}, None, timeout=5)
        with pytest.raises(FetchError, match=said):
            fetcher.fetch(0, 100)
    finally:
        server.shutdown()
        server.server_close()


def test_the_asked_range_is_returned() -> None:
    server = serve_bytes(206, f"bytes 0-99/{SIZE}")
    try:
        port = server.server_address[1]
        fetcher = RangeFetcher(f"http://127.0.0.1:{port}/disk", SIZE, {}, None, timeout=5)
        assert fetcher.fetch(0, 100) == CONTENT[:100]
        assert fetcher.fetch(0, 100) == CONTENT[:100]  # on the same connection
    finally:
        server.shutdown()
        server.server_close()

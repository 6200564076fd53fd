"""Reading a worker's /progress over the Pod IP; "not answering yet" is not an error.

The operator does not trust what a worker Pod says: the answer is bounded in size (a real
one is a few hundred bytes), parsed in a thread so that no answer can stall Kopf's event
loop, and validated (finite, bounded numbers and strings: see protocol.Progress). Anything
else counts as no answer.
"""

from __future__ import annotations

import asyncio

import aiohttp
from pydantic import ValidationError

from hyper2kvm_worker.protocol import Progress

MAX_ANSWER_BYTES = 64 * 1024


class ProgressReader:
    def __init__(self, port: int, timeout_seconds: float) -> None:
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def read(self, pod_ip: str) -> Progress | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        try:
            async with self._session.get(f"http://{host}:{self._port}/progress") as response:
                if response.status != 200:
                    return None
                if (response.content_length or 0) > MAX_ANSWER_BYTES:
                    return None
                body = b""
                while chunk := await response.content.read(MAX_ANSWER_BYTES + 1 - len(body)):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        return None  # read no further: a worker cannot make the operator grow
            return await asyncio.to_thread(Progress.model_validate_json, body)
        except (aiohttp.ClientError, TimeoutError, ValidationError, ValueError):
            return None  # starting, finishing, briefly unreachable, or lying: ask again later

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

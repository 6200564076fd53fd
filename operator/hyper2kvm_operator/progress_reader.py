"""Reading a worker's /progress over the Pod IP; "not answering yet" is not an error."""

from __future__ import annotations

import aiohttp
from pydantic import ValidationError

from hyper2kvm_worker.protocol import Progress


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
                return Progress.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValidationError):
            return None  # starting, finishing, or briefly unreachable: ask again next time

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

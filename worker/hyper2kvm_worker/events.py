"""Where a job's events go: JSON lines on stdout and in an events file, one object a line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


class EventSink:
    def __init__(
        self,
        clock: Callable[[], float],
        stream: TextIO | None = None,
        path: Path | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._clock = clock
        self._stream = stream
        self._file = path.open("a", encoding="utf-8") if path else None
        self._listener = listener
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "time": round(self._clock(), 3), **fields}
        line = json.dumps(event, separators=(",", ":"), default=str)
        with self._lock:
            for target in (self._stream, self._file):
                if target is not None:
                    target.write(line + "\n")
                    target.flush()
            if self._listener is not None:
                self._listener(event)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

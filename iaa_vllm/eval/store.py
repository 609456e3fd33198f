"""The answer file: one JSON line per finished question, appended as answers arrive.

A run killed at any moment leaves every line it flushed intact, plus at most one
half-written last line. Opening the store again drops that partial line, and the
ids already present are the questions a resumed run skips; nothing is redone and
nothing finished is lost.
"""

from __future__ import annotations

import json
import os


class AnswerStore:
    """Append-only JSON-lines file of `{"id": ..., ...}` records."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.records = self._load()
        self._file = open(path, "a", encoding="utf-8")

    def _load(self) -> dict[str, dict]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a kill mid-write: the tail is a partial record
            with open(self.path, "r+b") as f:
                f.truncate(end)
        records = {}
        for line in data[:end].decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["id"]] = record
        return records

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> None:
        # One write + flush + fsync per record: a kill can only cut the line in flight.
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[record["id"]] = record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AnswerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

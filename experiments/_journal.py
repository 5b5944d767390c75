"""Resumable runs (EXP-64): every finished run is appended to ``runs.jsonl`` in the output
folder as it ends, so that a run stopped at any moment continues where it stopped when started
again with the same arguments.

The journal's first line is the run's *fingerprint* (experiment, preset, data set, seeds,
device and configuration). A journal whose fingerprint differs from the new run's belongs to
another configuration: it is moved aside (``runs.jsonl.stale``) and the run starts afresh.
Each further line is one run: its key (scope, arm, value, seed as JSON), its public results and,
when it has private tensors (``_weight``), the name of a ``.pt`` file next to the journal that
holds them (read back with ``torch.load(weights_only=True)``: tensors only, no code). NaN/inf
are kept as Python's ``json`` writes them. Each line is flushed and fsynced before the run
counts as done; a torn last line (a kill while writing) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._common import public

JOURNAL = "runs.jsonl"


def _key(scope: str, arm: Hashable, value: Hashable, seed: int) -> str:
    return json.dumps([scope, arm, value, seed], sort_keys=True)


class Journal:
    """The finished runs of one output folder, read at start and appended as runs finish."""

    def __init__(self, folder: Path, fingerprint: Mapping[str, Any]) -> None:
        self.folder = folder
        self.path = folder / JOURNAL
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), sort_keys=True))
        self.done: dict[str, dict[str, Any]] = {}
        self.reused: list[str] = []
        self.stale = False
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read()
        if not self.path.exists():
            self._write_line({"fingerprint": self.fingerprint})

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0])["fingerprint"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            head = None
        if head != self.fingerprint:  # another configuration (or no header): start afresh
            self.stale = True
            self.path.replace(self.path.with_name(JOURNAL + ".stale"))
            return
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.done[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn line from a kill mid-write: that run is trained again

    def _write_line(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            # NaN/inf as Python's json writes and reads them: a diverged run's loss reads back
            fh.write(json.dumps(dict(entry), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def get(self, scope: str, arm: Hashable, value: Hashable, seed: int) -> dict[str, Any] | None:
        """The journaled result of a run, or ``None`` when it has not finished before."""
        key = _key(scope, arm, value, seed)
        entry = self.done.get(key)
        if entry is None:
            return None
        result = dict(entry["result"])
        if entry.get("tensors"):
            result.update(torch.load(self.folder / entry["tensors"], weights_only=True))
        self.reused.append(key)
        return result

    def put(self, scope: str, arm: Hashable, value: Hashable, seed: int, result: dict) -> None:
        """Record a finished run (its private entries must be tensors)."""
        key = _key(scope, arm, value, seed)
        private = {k: v for k, v in result.items() if k.startswith("_")}
        tensors = None
        if private:
            if not all(isinstance(v, torch.Tensor) for v in private.values()):
                raise TypeError(f"a journaled run's private entries must be tensors: {key}")
            tensors = f"runs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
            torch.save(private, self.folder / tensors)
        entry = {"key": key, "result": public(result), "tensors": tensors}
        self._write_line(entry)
        self.done[key] = json.loads(json.dumps(entry))

    def report(self) -> dict[str, Any]:
        """For ``summary.json``: how many runs were reused from an earlier sitting, and which."""
        return {
            "file": JOURNAL,
            "reused": len(self.reused),
            "reused_keys": list(self.reused),
            "earlier_journal_stale": self.stale,
        }

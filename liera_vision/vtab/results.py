"""Result files, written atomically (temp file + ``os.replace``): a crash never leaves half a file.

* ``<task dir>/result.json`` — one run's record, written by ``train_vtab.py fit`` after its test.
* ``<run dir>/results.jsonl`` — JSON lines, one record per finished task, appended by the sweep
  (the whole file is rewritten to a temp file and swapped in, under an exclusive lock).

A record holds at least ``method``, ``task``, ``acc_final`` and ``acc_best`` (fractions in [0, 1]);
see :func:`liera_vision.vtab.cli.result_record` for the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from liera_vision.fileio import write_text_atomic

REQUIRED = ("method", "task", "acc_final", "acc_best")
RESULTS_FILE = "results.jsonl"  # a sweep's run folder: one record per line
RESULT_FILE = "result.json"     # one train_vtab.py fit run


def write_json_atomic(path: str | os.PathLike, record: dict) -> Path:
    return write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from err


def read_json(path: str | os.PathLike) -> dict:
    """The record of a ``result.json``; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    try:
        record = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    _check(record, str(path))
    return record


def _check(record, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: result record lacks {missing} (has {sorted(record)})")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines results file; ``ValueError`` naming ``file:line`` on a bad line."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({err})") from err
        _check(record, f"{path}:{lineno}")
        records.append(record)
    return records


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_jsonl_atomic(path: str | os.PathLike, record: dict) -> Path:
    """Append ``record`` as one line; the file is swapped in whole, so readers never see a partial line."""
    _check(record, "record")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = path.read_text() if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        return write_text_atomic(path, old + json.dumps(record, sort_keys=True) + "\n")

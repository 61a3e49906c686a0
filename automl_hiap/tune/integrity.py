"""A study file is checked before it is opened: a damaged or emptied one stops the command.

Left alone, Optuna reads a journal cut at a record boundary as an older study (finished trials
silently gone, trials left RUNNING), skips a cut last record and then appends after it (the
file becomes unreadable for good), and opens an empty SQLite file as a new study.

* **Seal.** Every append to a journal (:class:`SealedJournal`, under the journal's lock) also
  writes ``<journal>.seal`` atomically: the journal's length after the append and a hash of its
  last record. A journal shorter than its seal, or whose record at the sealed length is not the
  one written there, was cut or rewritten: refused. Every complete line must be a record.
* **An incomplete last record** past the seal is the one trace a writer killed mid-append (or
  a full disk) leaves: records are appended whole under the journal's lock and sealed right
  after, so that record never committed and nothing read it. It is cut off (under the lock,
  with a note) and the study resumes: every record before it is vouched for by the seal, and a
  trial whose final record it was is still RUNNING with a dead worker, so the sweep retries it
  (it is rerun, never dropped). Refusing would leave the user to cut the file by hand.
  Without a seal (a journal written before seals existed) a kill cannot be told from a cut:
  refused. The check holds the journal's lock, so a live writer is never cut; a lock its
  killed holder left is broken after Optuna's grace period (30 s).
* **Empty where a study is expected**: a 0-byte journal or SQLite file while ``OUT`` already
  holds trials or ``tune.json`` is a lost study, not a fresh start.
* **SQLite**: a non-empty file must start with SQLite's header, pass ``quick_check`` and hold
  Optuna's tables (Optuna would otherwise add them to any database and start over).

A refusal is one line naming the file, what is wrong and what to do; the file is not touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from automl_hiap.atomic import write_json
from automl_hiap.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"
# tables every Optuna schema since 2.x has; a file without them is not (or no longer) a study
OPTUNA_TABLES = frozenset(
    {"studies", "study_directions", "trials", "trial_params", "trial_values", "version_info"}
)
WHAT_TO_DO = "restore it from a backup, or tune into another --out"


def seal_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".seal")


class SealedJournal(JournalFileBackend):
    """Optuna's journal file, sealed after every append (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._journal_lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's own uses
        super().__init__(str(path), lock_obj=self._journal_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not logs:
            return
        records = [json.dumps(log, separators=(",", ":")).encode() + b"\n" for log in logs]
        self._journal_lock.acquire()
        try:
            with open(self._path, "ab") as handle:
                handle.write(b"".join(records))
                handle.flush()
                os.fsync(handle.fileno())
                length = handle.tell()
            _write_seal(self._path, length, records[-1])
        finally:
            self._journal_lock.release()


def _write_seal(journal: Path, length: int, last: bytes) -> None:
    payload = {"bytes": length, "last_record_sha256": hashlib.sha256(last).hexdigest()}
    write_json(seal_path(journal), payload)


def _read_seal(journal: Path) -> dict[str, Any] | None:
    seal = seal_path(journal)
    if not seal.is_file():
        return None
    try:
        found = json.loads(seal.read_text())
        length, digest = int(found["bytes"]), str(found["last_record_sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(
            f"{seal}: unreadable, so {journal.name} cannot be checked; restore it, or delete it "
            f"to accept {journal.name} as it is"
        ) from None
    return {"bytes": length, "sha256": digest}


def holds_results(out: Path) -> bool:
    """Whether ``out`` already holds a tune's trials or results (then a study must exist)."""
    trials = out / "trials"
    return (out / "tune.json").is_file() or (trials.is_dir() and any(trials.iterdir()))


def check_study_file(spec: str, out: Path) -> list[str]:
    """Refuse a damaged or emptied study file named by ``spec``; return notes of repairs."""
    if "://" not in spec and Path(spec).suffix in (".journal", ".log"):
        return check_journal(Path(spec), out)
    path = sqlite_path(spec)
    if path is not None:
        check_sqlite(path, out)
    return []


def sqlite_path(spec: str) -> Path | None:
    """The file of a SQLite study (``x.db`` or ``sqlite:///x.db``), None for other URLs."""
    if spec.startswith("sqlite:///"):
        name = spec.removeprefix("sqlite:///").partition("?")[0]
        return None if name in ("", ":memory:") else Path(name)
    if "://" in spec:
        return None
    return Path(spec) if Path(spec).suffix in (".db", ".sqlite", ".sqlite3") else None


def check_journal(path: Path, out: Path) -> list[str]:
    seal = _read_seal(path)
    if not path.exists():
        if seal is not None:
            raise UserError(
                f"{path}: missing, but {seal_path(path).name} says it held {seal['bytes']} bytes: "
                f"the study was lost; {WHAT_TO_DO}"
            )
        return []
    lock = JournalFileSymlinkLock(str(path))
    try:
        lock.acquire()  # no writer is half-way through an append while this reads
    except OSError as exc:
        raise UserError(f"{path}: cannot lock the journal ({exc.strerror})") from None
    try:
        return _check_journal_locked(path, out, seal)
    finally:
        lock.release()


def _check_journal_locked(path: Path, out: Path, seal: dict[str, Any] | None) -> list[str]:
    data = path.read_bytes()
    if not data and seal is None:
        if holds_results(out):
            raise UserError(
                f"{path}: empty, but {out} already holds this study's trials: the study was "
                f"lost; {WHAT_TO_DO}"
            )
        return []
    if seal is not None:
        sealed = seal["bytes"]
        if len(data) < sealed:
            size = f"{len(data)} bytes" if data else "empty"
            raise UserError(
                f"{path}: {size}, but it held {sealed} bytes when last written: the file was "
                f"cut and finished trials would be lost; {WHAT_TO_DO}"
            )
        start = data.rfind(b"\n", 0, max(sealed - 1, 0)) + 1
        if hashlib.sha256(data[start:sealed]).hexdigest() != seal["sha256"]:
            raise UserError(
                f"{path}: the record ending at byte {sealed} is not the one written there: the "
                f"file was changed; {WHAT_TO_DO}"
            )
    end = data.rfind(b"\n") + 1  # complete records end here
    offset = 0
    for number, line in enumerate(data[:end].splitlines(keepends=True), start=1):
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            raise UserError(
                f"{path}: record {number} (byte {offset}) is not an Optuna journal record: the "
                f"file is damaged; {WHAT_TO_DO}"
            )
        offset += len(line)
    if end == len(data):
        return []
    if seal is None:
        raise UserError(
            f"{path}: the last record is incomplete (byte {end} on) and no "
            f"{seal_path(path).name} vouches for the records before it, so a cut file cannot "
            f"be told from a killed writer; {WHAT_TO_DO}"
        )
    os.truncate(path, end)
    return [
        f"{path}: removed an incomplete last record ({len(data) - end} bytes at byte {end}, "
        "left by a writer killed mid-append); every record before it is intact"
    ]


def check_sqlite(path: Path, out: Path) -> None:
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        if holds_results(out):
            raise UserError(
                f"{path}: empty, but {out} already holds this study's trials: the study was "
                f"lost; {WHAT_TO_DO}"
            )
        return
    with open(path, "rb") as handle:
        head = handle.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        raise UserError(
            f"{path}: not a SQLite database (it starts with {head[:8]!r}); {WHAT_TO_DO}"
        )
    try:
        connection = sqlite3.connect(path)
        try:
            verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {row[0] for row in connection.execute(query)}
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: damaged SQLite database ({exc}); {WHAT_TO_DO}") from None
    if verdict != ["ok"]:
        raise UserError(f"{path}: damaged SQLite database ({verdict[0]}); {WHAT_TO_DO}")
    missing = sorted(OPTUNA_TABLES - tables)
    if missing:
        raise UserError(
            f"{path}: a SQLite database without Optuna's tables ({', '.join(missing)} "
            f"missing): not a study, or a damaged one; {WHAT_TO_DO}"
        )

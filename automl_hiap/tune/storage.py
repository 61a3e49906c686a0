"""Where a study lives, and how trials lost with their worker are found and retried.

* Storage: a SQLite file in ``OUT`` by default, a journal file (``.journal``) for ``--workers``
  > 1 (SQLite locks under concurrent writers), or any SQLAlchemy URL (PostgreSQL, MySQL) for
  workers on several machines. A study file is checked before it is opened (damage stops the
  command; :mod:`~automl_hiap.tune.integrity`).
* Dead workers: every trial records its worker (``host:pid``). A command started again (a
  resume) fails each running trial whose worker on this machine is gone, with the reason, and
  queues it again with the same params and the same folder, so the retry resumes from the
  trial's training checkpoints (a Ctrl-C'd trial is retried the same way). On database URLs
  Optuna's heartbeat (:data:`HEARTBEAT_S`, grace :data:`GRACE_S`) does the same for workers
  lost on other machines. Checking process ids rather than relying on the heartbeat alone
  keeps the journal and SQLite stores (which have no heartbeat) resumable, and makes a resume
  immediate.
* ``trials`` counts the whole study: a killed trial and its retry count once (:func:`taken`).
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from automl_hiap.errors import UserError
from automl_hiap.tune.integrity import SealedJournal, seal_path

HEARTBEAT_S, GRACE_S = 60, 180
UNCLAIMED_S = 120  # a live worker names itself on a trial within milliseconds of starting it


def display_storage(spec: str) -> str:
    """``spec`` for messages and results: a database URL's password masked."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", spec)


def default_storage(out: Path, workers: int) -> str:
    """The study file in ``out``: an existing one, else SQLite (journal for several workers)."""
    journal, sqlite = out / "study.journal", out / "study.db"
    if journal.exists() or seal_path(journal).exists():  # a sealed journal gone missing is damage
        return str(journal)
    if sqlite.exists():
        return str(sqlite)
    return str(journal if workers > 1 else sqlite)


def is_sqlite(spec: str) -> bool:
    return spec.startswith("sqlite:") or Path(spec).suffix in (".db", ".sqlite", ".sqlite3")


def open_storage(spec: str) -> BaseStorage:
    """A database URL (RDBStorage, with heartbeats unless SQLite), a ``.db`` SQLite file, or a
    ``.journal`` file shared by local processes (sealed: :mod:`~automl_hiap.tune.integrity`)."""
    if "://" not in spec:
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".journal", ".log"):
            return JournalStorage(SealedJournal(path))
        if not is_sqlite(spec):
            raise UserError(
                f"--storage {spec}: expected a database URL (sqlite:///study.db, "
                "postgresql://user@host/db) or a file ending in .db (SQLite) or .journal"
            )
        spec = f"sqlite:///{path.resolve()}"
    try:
        if spec.startswith("sqlite"):
            return RDBStorage(spec)
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                spec,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_retry_lost,
            )
    except ModuleNotFoundError as exc:
        raise UserError(
            f"--storage {display_storage(spec)}: the database driver {exc.name} is not "
            "installed (PostgreSQL: pip install 'automl_hiap[postgres]')"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"--storage {display_storage(spec)}: cannot open the study database "
            f"({type(exc).__name__}: {display_storage(first)})"
        ) from None


def retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue a failed trial again: same params, same folder (its checkpoints resume it)."""
    folder = trial.user_attrs.get("folder", trial.number)
    study.enqueue_trial(
        dict(trial.params),
        user_attrs={"retry_of": trial.number, "folder": folder, "retry_reason": reason},
    )


def _retry_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    retry(study, trial, f"no heartbeat for {GRACE_S} s (worker lost)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(study: optuna.Study, storage: BaseStorage) -> list[str]:
    """Fail and requeue the trials whose worker on this machine is gone; return notes."""
    host, now, notes = socket.gethostname(), datetime.now(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        if trial.state == TrialState.RUNNING:
            if worker is None:
                started = trial.datetime_start or now
                lost = (now - started).total_seconds() > UNCLAIMED_S
            else:
                worker_host, _, pid = str(worker).rpartition(":")
                lost = worker_host == host and not _alive(int(pid))
            if not lost:
                continue
            reason = f"worker {worker or '(unknown)'} died during the trial"
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # another process got there first
                continue
        elif (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get("interrupted")
            and trial.number not in retried
        ):
            reason = "interrupted"
        else:
            continue
        retry(study, trial, reason)
        notes.append(f"trial {trial.number}: {reason}; queued again to resume")
    return notes


def taken(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count towards ``tune.trials``: started or finished, a retried one once."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(t.state != TrialState.WAITING and t.number not in retried for t in trials)

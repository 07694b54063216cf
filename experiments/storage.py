"""The Optuna storage of a sweep: the journal file `OUT/optuna.journal` by default, or a database URL.

Studies of a sweep (prefix: the name of OUT, or --study): `<prefix>.runs` (the fixed (setting, seed) runs),
`<prefix>.search` (the search trials). Decisions that one worker only may take (enqueue the runs, retry a failed
run, take over a lost one) are made by creating an empty marker study `<prefix>.once.<what>`: the storage lets
exactly one creator succeed, on a journal file as on a database.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from utilities.errors import UserError

JOURNAL_FILE = "optuna.journal"
RUNS, SEARCH = "runs", "search"


def redact(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: show no credentials at all
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def open_storage(out: str, url: str | None) -> BaseStorage:
    """The sweep's storage; a URL that cannot be opened is a UserError naming it without its password."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(out) / JOURNAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return _open_database(with_driver(url))
    except Exception as exc:  # noqa: BLE001 - driver, network, authentication, bad URL: one line for the user
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        password = _password(url)
        if password:
            reason = reason.replace(password, "***")
        raise UserError(f"--storage {redact(url)} cannot be opened: {reason[:300]}") from None


def _open_database(url: str, attempts: int = 5) -> BaseStorage:
    """Optuna's database storage. Workers started together all create Optuna's tables on a new database; the
    database lets one CREATE win and the others fail (PostgreSQL: a unique violation, or "already exists"), and a
    loser only has to open the storage again, on tables that now exist."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=None)
        except (IntegrityError, ProgrammingError) as exc:
            concurrent = isinstance(exc, IntegrityError) or "already exists" in str(exc)
            if not concurrent or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def with_driver(url: str) -> str:
    """`postgresql://` with the driver of requirements.txt (psycopg 3), whatever SQLAlchemy's default is."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def study(storage: BaseStorage, prefix: str, name: str, sampler=None, pruner=None) -> optuna.Study:
    """Load or create the study `<prefix>.<name>` (maximised: the objective is `best_metric`)."""
    return optuna.create_study(
        storage=storage,
        study_name=f"{prefix}.{name}",
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )


def once(storage: BaseStorage, prefix: str, what: str) -> bool:
    """True for exactly one caller per `what` over all workers and commands of a sweep."""
    try:
        storage.create_new_study([StudyDirection.MAXIMIZE], f"{prefix}.once.{what}")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True

"""The job store: every job of every session in one SQLite database in the workspace.

The app server, its dispatcher and the worker processes all open the same file
(``<workspace>/jobs.sqlite``) in WAL mode, so readers (the pages, polling every second) never block
the writers (workers reporting progress) and a crash of any process leaves the last committed state.
A job row holds its kind, owner session, parameters (JSON), status, progress, message, result,
error, artefact paths, timestamps, the cancel-requested flag and the worker's pid; its per-epoch
history is a table of its own (one insert per epoch). Sessions have a row each (created, last seen).

**Schema versions.** ``PRAGMA user_version`` is the schema version. :data:`MIGRATIONS` lists the
steps from an empty file to the current version; opening a store applies the missing ones in one
transaction each. A store written by a newer version, or a file that is not a readable SQLite
database, is refused with a :class:`~scd_core.errors.ScdError` instead of being touched.

Nothing here imports streamlit or torch.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from scd_core.errors import ScdError

STORE_NAME = "jobs.sqlite"
SHARED_SESSION = "__shared__"
"""Owner of jobs that serve every session (demo-world builds)."""


class JobStatus(str, Enum):
    """Where a job is in its life. Active: queued, running, cancelling; the others are final."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its worker or the server stopped while it ran; it can be restarted

    @property
    def active(self) -> bool:
        return self in ACTIVE_STATES

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})
TERMINAL_STATES = frozenset(set(JobStatus) - ACTIVE_STATES)
RESTARTABLE_STATES = frozenset({JobStatus.FAILED, JobStatus.INTERRUPTED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class JobSnapshot:
    """A read-only copy of one job, as the pages and the CLI see it."""

    id: str
    session: str
    kind: str
    label: str
    status: JobStatus
    lane: str = "train"
    key: str | None = None
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    progress: float = 0.0
    message: str = ""
    history: list[dict] = field(default_factory=list)
    result: dict | None = None
    error: str | None = None
    artefacts: dict = field(default_factory=dict)
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    cancel_requested: bool = False
    worker_pid: int | None = None
    worker_host: str | None = None
    dispatcher: str | None = None  # "host:pid" of the server process that claimed it
    seq: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def restartable(self) -> bool:
        return self.status in RESTARTABLE_STATES

    @property
    def elapsed(self) -> float:
        """Seconds since it started (until it ended); 0 while queued."""
        return ((self.ended or time.time()) - self.started) if self.started else 0.0


@dataclass(frozen=True)
class QueueSlot:
    """Where a queued job stands: its place in the fair order and what it waits for."""

    position: int  # 1 = the next job to start
    ahead_own: int  # jobs of the same session ahead of it
    ahead_other: int  # jobs of other sessions ahead of it (queued or running)
    running_other: int  # workers busy with other sessions' jobs

    def reason(self) -> str:
        """Why the job waits, in words."""
        parts = []
        if self.running_other:
            parts.append(f"{_n(self.running_other, 'run')} of other sessions running")
        if self.ahead_other:
            parts.append(f"{_n(self.ahead_other, 'run')} of other sessions ahead")
        if self.ahead_own:
            parts.append(f"{_n(self.ahead_own, 'earlier run')} of this session ahead")
        return f"queued, position {self.position}" + (f": {', '.join(parts)}" if parts else ": next to start")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------

_V1 = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    session TEXT NOT NULL,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    lane TEXT NOT NULL DEFAULT 'train',
    key TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    meta TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    artefacts TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER
);
CREATE INDEX jobs_session ON jobs(session, seq);
CREATE INDEX jobs_status ON jobs(status, lane, seq);
CREATE TABLE job_history (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);
"""

_V2 = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    last_seen REAL NOT NULL
);
INSERT OR IGNORE INTO sessions (id, created, last_seen)
    SELECT session, MIN(created), MAX(COALESCE(ended, created)) FROM jobs GROUP BY session;
ALTER TABLE jobs ADD COLUMN heartbeat REAL;
ALTER TABLE jobs ADD COLUMN worker_host TEXT;
ALTER TABLE jobs ADD COLUMN dispatcher TEXT;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
"""``MIGRATIONS[i]`` takes a store from version ``i`` to ``i + 1``."""
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to version ``upto``; returns the version the store is at."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ScdError(f"the job store was written by a newer version of scd-explorer (schema {version}, this "
                       f"version reads up to {SCHEMA_VERSION}); upgrade, or point SCD_WORKSPACE elsewhere")
    for step in range(version, upto):
        # one transaction per step: a crash mid-migration leaves the previous version intact
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current == step:  # another process may have migrated meanwhile
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


_COLUMNS = ("seq", "id", "session", "kind", "label", "lane", "key", "params", "meta", "status", "progress", "message",
            "result", "error", "artefacts", "created", "started", "ended", "cancel_requested", "worker_pid",
            "heartbeat", "worker_host", "dispatcher")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


# ------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------


class JobStore:
    """Jobs and sessions in ``path`` (SQLite, WAL). Safe to use from many threads and processes."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._conn()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ScdError(f"the job store cannot use WAL mode on this file system (got {mode!r})")
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ScdError(f"the job store {self.path.name} in the workspace is not a readable database ({exc}); "
                           "move it away to start with an empty store") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _write(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn().execute(sql, tuple(args)).rowcount

    def _transaction(self):
        return _Transaction(self._conn())

    @property
    def version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- submitting ------------------------------------------------------------------------------
    def submit(self, session: str, kind: str, label: str, *, params: dict | None = None, meta: dict | None = None,
               key: str | None = None, lane: str = "train", max_active: int | None = None) -> str:
        """Queue a job of ``session``; returns its id.

        With a ``key``, an active job of the same session and key is returned instead of a second one
        (one build of a demo world however many pages ask for it). ``max_active`` refuses a job when
        the session already has that many active jobs.
        """
        job_id = f"{kind}-{uuid.uuid4().hex[:12]}"
        now = time.time()
        with self._transaction() as conn:
            if key is not None:
                row = conn.execute("SELECT id FROM jobs WHERE session=? AND key=? AND status IN (?,?,?) "
                                   "ORDER BY seq DESC LIMIT 1", (session, key, *_ACTIVE)).fetchone()
                if row:
                    return row[0]
            if max_active is not None:
                n = conn.execute("SELECT COUNT(*) FROM jobs WHERE session=? AND status IN (?,?,?)",
                                 (session, *_ACTIVE)).fetchone()[0]
                if n >= max_active:
                    raise ScdError(f"too many runs in progress (limit {max_active}); wait for some to finish or "
                                   "cancel them")
            conn.execute("INSERT INTO jobs (id, session, kind, label, lane, key, params, meta, status, message, "
                         "created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (job_id, session, kind, label, lane, key, _dumps(params or {}), _dumps(meta or {}),
                          JobStatus.QUEUED.value, "waiting for a worker", now))
            self._touch(conn, session, now)
        return job_id

    def promote(self, job_id: str, lane: str) -> bool:
        """Move a queued job to ``lane`` (a background build somebody now waits for); False when it is not
        queued any more (a running job stays where it runs)."""
        return self._write("UPDATE jobs SET lane=? WHERE id=? AND status=?", (lane, job_id,
                                                                            JobStatus.QUEUED.value)) > 0

    def restart(self, session: str, job_id: str) -> str | None:
        """Queue a new job with the parameters of a failed, cancelled or interrupted one of ``session``."""
        job = self.get(job_id, session=session)
        if job is None or not job.restartable:
            return None
        meta = {**job.meta, "restart_of": job.id}
        return self.submit(session, job.kind, job.label, params=job.params, meta=meta, key=job.key, lane=job.lane)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, job_id: str, *, session: str | None = None, history: bool = True) -> JobSnapshot | None:
        """One job (None for unknown ids, and for another session's job when ``session`` is given)."""
        row = self._conn().execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None or (session is not None and row[2] != session):
            return None
        return self._snapshots([row], history)[0]

    def jobs(self, session: str | None = None, *, kind: str | None = None, history: bool = True,
             statuses: Iterable[JobStatus] | None = None) -> list[JobSnapshot]:
        """Jobs of ``session`` (every session when None), oldest first."""
        where, args = [], []
        if session is not None:
            where.append("session=?")
            args.append(session)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        if statuses is not None:
            values = [JobStatus(s).value for s in statuses]
            where.append(f"status IN ({','.join('?' * len(values))})")
            args += values
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._conn().execute(sql + " ORDER BY seq", args).fetchall()
        return self._snapshots(rows, history)

    def find(self, session: str, key: str) -> JobSnapshot | None:
        """The newest job of ``session`` with ``key``."""
        row = self._conn().execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE session=? AND key=? "
                                   "ORDER BY seq DESC LIMIT 1", (session, key)).fetchone()
        return self._snapshots([row], True)[0] if row else None

    def _snapshots(self, rows: list[tuple], history: bool) -> list[JobSnapshot]:
        records: dict[str, list[dict]] = {}
        if history and rows:
            ids = [r[1] for r in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for job_id, record in self._conn().execute(
                        f"SELECT job_id, record FROM job_history WHERE job_id IN ({','.join('?' * len(chunk))}) "
                        "ORDER BY job_id, n", chunk):
                    records.setdefault(job_id, []).append(json.loads(record))
        out = []
        for r in rows:
            d = dict(zip(_COLUMNS, r))
            out.append(JobSnapshot(
                id=d["id"], session=d["session"], kind=d["kind"], label=d["label"], status=JobStatus(d["status"]),
                lane=d["lane"], key=d["key"], params=json.loads(d["params"]), meta=json.loads(d["meta"]),
                progress=float(d["progress"]), message=d["message"], history=records.get(d["id"], []),
                result=json.loads(d["result"]) if d["result"] else None, error=d["error"],
                artefacts=json.loads(d["artefacts"]), created=d["created"], started=d["started"], ended=d["ended"],
                heartbeat=d["heartbeat"], cancel_requested=bool(d["cancel_requested"]), worker_pid=d["worker_pid"],
                worker_host=d["worker_host"], dispatcher=d["dispatcher"], seq=d["seq"]))
        return out

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked ``job_id`` to stop (one indexed read: cheap enough to poll often)."""
        row = self._conn().execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    # -- fair queue ------------------------------------------------------------------------------
    def queue(self, lane: str = "train") -> list[tuple[JobSnapshot, QueueSlot]]:
        """Queued jobs of ``lane`` in the order they will start, with their place and reason.

        The order is round-robin between sessions: the next job belongs to the session with the fewest
        jobs running or placed before it; among equals, the session served longest ago (whose last job
        started earliest, or never) goes first. Each session's own jobs keep their order. So a session
        that queued ten runs does not make a second session wait for all ten.
        """
        jobs = self.jobs(statuses=ACTIVE_STATES, history=False)
        jobs = [j for j in jobs if j.lane == lane]
        served = dict(self._conn().execute("SELECT session, MAX(started) FROM jobs WHERE lane=? AND started IS NOT "
                                           "NULL GROUP BY session", (lane,)).fetchall())
        running: dict[str, int] = {}
        for j in jobs:
            if j.status != JobStatus.QUEUED:
                running[j.session] = running.get(j.session, 0) + 1
        waiting: dict[str, list[JobSnapshot]] = {}
        for j in jobs:
            if j.status == JobStatus.QUEUED:
                waiting.setdefault(j.session, []).append(j)
        order: list[JobSnapshot] = []
        placed = dict(running)
        clock = max([0.0, *[v for v in served.values() if v is not None]])
        while waiting:
            session = min(waiting, key=lambda s: (placed.get(s, 0), served.get(s) or 0.0, waiting[s][0].seq))
            order.append(waiting[session].pop(0))
            placed[session] = placed.get(session, 0) + 1
            clock += 1.0
            served[session] = clock  # placed now: behind every session not yet served in this round
            if not waiting[session]:
                del waiting[session]
        out = []
        for i, job in enumerate(order):
            ahead = order[:i]
            own = sum(a.session == job.session for a in ahead)
            other_running = sum(n for s, n in running.items() if s != job.session)
            out.append((job, QueueSlot(i + 1, own, len(ahead) - own, other_running)))
        return out

    def any_active(self, lanes: Iterable[str]) -> bool:
        """Whether any job of ``lanes`` is queued, running or being cancelled (one indexed lookup)."""
        lanes, states = list(lanes), [s.value for s in ACTIVE_STATES]
        sql = (f"SELECT 1 FROM jobs WHERE lane IN ({','.join('?' * len(lanes))}) "
               f"AND status IN ({','.join('?' * len(states))}) LIMIT 1")
        return self._conn().execute(sql, [*lanes, *states]).fetchone() is not None

    def running_count(self, lane: str = "train", session: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM jobs WHERE lane=? AND status IN (?,?)"
        args: list[Any] = [lane, JobStatus.RUNNING.value, JobStatus.CANCELLING.value]
        if session is not None:
            sql += " AND session=?"
            args.append(session)
        return self._conn().execute(sql, args).fetchone()[0]

    def claim(self, job_id: str, dispatcher: str | None = None) -> bool:
        """queued -> running for the dispatcher that will submit it; False if it was cancelled or taken.

        ``dispatcher`` ("host:pid", default this process) tells later readers whose worker runs it."""
        owner = dispatcher or f"{socket.gethostname()}:{os.getpid()}"
        return self._write("UPDATE jobs SET status=?, message=?, started=?, heartbeat=?, dispatcher=? "
                           "WHERE id=? AND status=?",
                           (JobStatus.RUNNING.value, "starting a worker", time.time(), time.time(), owner, job_id,
                            JobStatus.QUEUED.value)) == 1

    # -- worker side -----------------------------------------------------------------------------
    def mark_started(self, job_id: str, pid: int, host: str | None = None) -> None:
        self._write("UPDATE jobs SET worker_pid=?, worker_host=?, heartbeat=?, message=? WHERE id=?",
                    (pid, host or socket.gethostname(), time.time(), "started", job_id))

    def report(self, job_id: str, *, progress: float | None = None, message: str | None = None) -> None:
        """Progress and a message from the worker; also its heartbeat."""
        sets, args = ["heartbeat=?"], [time.time()]
        if progress is not None and math.isfinite(progress):
            sets.append("progress=?")
            args.append(min(1.0, max(0.0, float(progress))))
        if message is not None:
            sets.append("message=?")
            args.append(message)
        self._write(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", [*args, job_id])

    def add_history(self, job_id: str, record: dict) -> None:
        """Append one per-epoch record."""
        with self._transaction() as conn:
            n = conn.execute("SELECT COUNT(*) FROM job_history WHERE job_id=?", (job_id,)).fetchone()[0]
            conn.execute("INSERT INTO job_history (job_id, n, record) VALUES (?,?,?)", (job_id, n, _dumps(record)))

    def set_artefacts(self, job_id: str, **paths: str) -> None:
        with self._transaction() as conn:
            row = conn.execute("SELECT artefacts FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is not None:
                merged = {**json.loads(row[0]), **{k: str(v) for k, v in paths.items()}}
                conn.execute("UPDATE jobs SET artefacts=? WHERE id=?", (_dumps(merged), job_id))

    def finish(self, job_id: str, status: JobStatus, *, result: dict | None = None, error: str | None = None,
               message: str | None = None) -> bool:
        """Move an active job to a final status (once: False when it had already ended)."""
        status = JobStatus(status)
        if status.active:
            raise ValueError(f"{status} is not a final status")
        now = time.time()
        text = message or {JobStatus.FINISHED: "finished", JobStatus.CANCELLED: "cancelled"}.get(status) or error \
            or str(status)
        with self._transaction() as conn:
            n = conn.execute(
                "UPDATE jobs SET status=?, result=COALESCE(?, result), error=?, message=?, ended=?, "
                "progress=CASE WHEN ?='finished' THEN 1.0 ELSE progress END WHERE id=? AND status IN (?,?,?)",
                (status.value, _dumps(result) if result is not None else None, error, text, now, status.value,
                 job_id, *_ACTIVE)).rowcount
            if n:
                row = conn.execute("SELECT session FROM jobs WHERE id=?", (job_id,)).fetchone()
                self._touch(conn, row[0], now)  # a job that just ended counts as activity of its session
        return n == 1

    # -- controlling -----------------------------------------------------------------------------
    def request_cancel(self, job_id: str, *, session: str | None = None) -> bool:
        """Ask a job to stop: a queued one is cancelled at once, a running one is flagged for its worker."""
        with self._transaction() as conn:
            row = conn.execute("SELECT session, status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or (session is not None and row[0] != session):
                return False
            status = JobStatus(row[1])
            if status == JobStatus.QUEUED:
                conn.execute("UPDATE jobs SET status=?, message=?, ended=?, cancel_requested=1 WHERE id=?",
                             (JobStatus.CANCELLED.value, "cancelled before it started", time.time(), job_id))
                return True
            if status in (JobStatus.RUNNING, JobStatus.CANCELLING):
                conn.execute("UPDATE jobs SET status=?, message=?, cancel_requested=1 WHERE id=?",
                             (JobStatus.CANCELLING.value, "cancelling", job_id))
                return True
            return False

    def forget(self, job_id: str, *, session: str | None = None) -> bool:
        """Remove a job that has ended (and its history) from the store."""
        sql = "DELETE FROM jobs WHERE id=? AND status NOT IN (?,?,?)"
        args: list[Any] = [job_id, *_ACTIVE]
        if session is not None:
            sql += " AND session=?"
            args.append(session)
        return self._write(sql, args) == 1

    def interrupt_stale(self, *, stale_s: float, host: str | None = None, alive=None,
                        skip: Iterable[str] = ()) -> list[str]:
        """Mark running jobs whose worker is gone as interrupted (their history stays); returns their ids.

        On this ``host`` a job is gone when ``alive(pid)`` says its worker's process has ended or, before
        the worker started, its dispatcher's process has ended. For a job on another host (a remote
        backend) only the heartbeat can tell: gone when older than ``stale_s``. Jobs in ``skip`` (those
        the caller's own workers hold) are left alone.
        """
        host = host or socket.gethostname()
        now = time.time()
        gone = []
        skip = set(skip)
        for job in self.jobs(statuses=(JobStatus.RUNNING, JobStatus.CANCELLING), history=False):
            if job.id in skip:
                continue
            owner_host, _, owner_pid = (job.dispatcher or "").rpartition(":")
            if job.worker_pid and job.worker_host == host and alive is not None:
                dead = not alive(job.worker_pid)
            elif not job.worker_pid and owner_host == host and owner_pid.isdigit() and alive is not None:
                dead = not alive(int(owner_pid))
            else:
                dead = now - (job.heartbeat or job.started or job.created) > stale_s
            if dead and self.finish(job.id, JobStatus.INTERRUPTED,
                                    error="the server or its worker stopped while this job ran; restart it to "
                                          "run it again"):
                gone.append(job.id)
        return gone

    # -- sessions --------------------------------------------------------------------------------
    def create_session(self, session: str) -> None:
        now = time.time()
        self._write("INSERT OR IGNORE INTO sessions (id, created, last_seen) VALUES (?,?,?)", (session, now, now))

    def session_exists(self, session: str) -> bool:
        return self._conn().execute("SELECT 1 FROM sessions WHERE id=?", (session,)).fetchone() is not None

    def touch_session(self, session: str) -> None:
        self._touch(self._conn(), session, time.time())

    @staticmethod
    def _touch(conn: sqlite3.Connection, session: str, now: float) -> None:
        conn.execute("INSERT INTO sessions (id, created, last_seen) VALUES (?,?,?) "
                     "ON CONFLICT(id) DO UPDATE SET last_seen=MAX(last_seen, excluded.last_seen)",
                     (session, now, now))

    def last_seen(self, session: str) -> float | None:
        row = self._conn().execute("SELECT last_seen FROM sessions WHERE id=?", (session,)).fetchone()
        return row[0] if row else None

    def expired_sessions(self, ttl_s: float, now: float | None = None) -> list[str]:
        """Sessions idle for ``ttl_s`` seconds with no active job (a running job keeps its session alive)."""
        now = time.time() if now is None else now
        rows = self._conn().execute(
            "SELECT id FROM sessions s WHERE last_seen < ? AND id != ? AND NOT EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.session = s.id AND j.status IN (?,?,?))",
            (now - ttl_s, SHARED_SESSION, *_ACTIVE)).fetchall()
        return [r[0] for r in rows]

    def delete_session(self, session: str) -> None:
        """Forget a session and all its jobs (the caller deletes its files)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE session=?", (session,))
            conn.execute("DELETE FROM sessions WHERE id=?", (session,))


_ACTIVE = tuple(s.value for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error): one writer at a time, no lost updates."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def store_path(workspace: str | Path | None = None) -> Path:
    """``<workspace>/jobs.sqlite``."""
    from scd_core.runtime.workspace import workspace_dir

    return Path(workspace) / STORE_NAME if workspace is not None else workspace_dir() / STORE_NAME

"""The write-ahead audit journal: a request's audit facts are on disk before its answer leaves, so an
ingress replica killed outright (SIGKILL, ``ray.kill``) loses no audit row of a request it answered.

Why: the ingress builds audit rows in its sync thread (building the decision as JSON was ~8 % of
the request path) and ``AuditLog`` keeps them in memory until its next flush; both buffers die
with the process. The journal is the part of that path that must not, kept small:

- **Entry** (``journal_entry``): one compact JSON line per finished request: the audit columns read
  straight off the request, its outcome and its final decision (``decision_columns``: ids,
  substrates, spillover, counts, rejections rolled up, predictions, snapshot, policy), the times in
  epoch seconds and the writer's config hash; no fleet lookup and no decision JSON. Names are
  written as the row writes them (``recorded_names``, ``safe_error_code``), so the journal holds no
  more client text than the audit log: no key, prompt or completion.
- **Write** (``Journal.write``, on the request path before the response's last bytes): one
  ``os.write`` of the line on an ``O_APPEND`` fd. No fsync by default: the line is in the kernel's
  page cache when ``write`` returns, which survives the process being killed but not the machine
  losing power; ``fsync=True`` syncs each line (a disk flush per request). A failed write is counted
  (``failed_writes``), logged once per run of failures, and never fails the request.
- **Lifecycle**: segments rotate whenever the audit log reports a file written (``written``,
  passed to ``AuditLog`` as ``on_written``); a rotated segment is deleted once every request in it
  has its Parquet row in place. A writer thus keeps one or two segments; ``close`` (after the
  audit log's) leaves none unless a row could not be written, which then waits for recovery.
- **Recovery** (``recover``): an orphan is a segment of this host whose pid no longer runs
  (``os.kill(pid, 0)`` raises ``ProcessLookupError``). A replica claims it by renaming it to a
  segment name of its own (atomic: of two claimants, one rename fails), appends a marker line
  naming itself, drops the entries whose request already has a row (it reads only the
  ``request_id`` column of the files of the writers that could have written one: the entries'
  ingress replicas and every claimant named by a marker), queues rebuilt rows (``recovered_row``)
  for the rest on its own ``AuditLog`` and tracks the segment as one of its own: deleted once
  those rows are written. A claimant killed in turn leaves an orphan of its own pid, adopted
  again, still exactly once. A line cut by a kill mid-write (the file's last, without its newline)
  or otherwise unreadable is skipped and counted.

Recovered rows carry ``recovered_by``, the replica that rebuilt them: a new nullable column, as no
existing one can say "rebuilt" without changing what it means (``ingress_id`` must stay the replica
that answered; a null ``decision_json`` also marks a request refused before placement). A recovered
row fills every column but ``decision_json``; the columns derived from the fleet (substrate facts,
cost, boundary, deadlines, ``met_sla``) come from the recovering replica's config when its policy
hash equals the entry's, else they are null and a spillover's boundary is ``jurisdiction`` (unknown
is never assumed close).

Files: ``DIR/_journal/<writer>@<host>@<pid>@<seq>.jsonl`` beside the audit log's ``DIR/date=...``
partitions; ``_journal`` is skipped by ``pyarrow.dataset`` (leading ``_``) and by ``read_audit``
(``date=`` only). A pid means nothing on another machine, so segments of other hosts are left
alone: on a multi-node cluster sharing one audit directory, each node's segments are recovered by
an ingress replica on that node (those of a node that never returns wait for an operator). A pid
reused by a new process keeps a dead writer's segments waiting until that process ends too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferplane.placement.decision import PlacementDecision
from inferplane.placement.fleet import FleetSpec
from inferplane.placement.policy import PlacementPolicy, SlaPolicy
from inferplane.telemetry.audit import (
    AUDIT_SCHEMA_VERSION,
    COLUMNS,
    WRITER_ID_RE,
    AuditLog,
    RequestOutcome,
    decision_columns,
    recorded_names,
    request_ids,
    safe_error_code,
    sla_columns,
    substrate_columns,
)

log = logging.getLogger("inferplane.journal")

JOURNAL_DIR = "_journal"
ENTRY_VERSION = 1
_COLUMN_SET = frozenset(COLUMNS)
_SEGMENT_RE = re.compile(r"^(?P<writer>[^@]+)@(?P<host>[^@]+)@(?P<pid>\d+)@(?P<seq>\d{10})\.jsonl$")
_HOST_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
_YEAR_10000_S = 253_402_300_800


# -------------------------------------------------------------------------------------------------
# Entries and the rows rebuilt from them


def journal_entry(
    *,
    request_id: str,
    ingress_id: str,
    received_at_s: float,
    tenant: str | None,
    model: str | None,
    sla_class: str | None,
    decision: PlacementDecision | None,
    outcome: RequestOutcome,
    fleet: FleetSpec,
    ingress_region: str | None,
    snapshot_age_s: float | None,
    sla: SlaPolicy | None,
    config_hash: str,
) -> dict[str, Any]:
    """The journal entry of one finished request: ``audit_row``'s arguments (the same meaning) reduced
    to what ``recovered_row`` cannot derive again from the config, plus the writer's ``config_hash``
    (its policy hash). Keys that are audit columns hold the column's value; the others are ``v``
    (``ENTRY_VERSION``), ``config``, ``received_at_s`` and ``finished_at_s`` (epoch seconds)."""
    if decision is not None:
        tenant, model, sla_class = decision.tenant, decision.model, decision.sla_class
    model, sla_class, redact = recorded_names(model, sla_class, decision, fleet, sla)
    entry: dict[str, Any] = {
        "v": ENTRY_VERSION, "config": config_hash, "request_id": request_id, "received_at_s": received_at_s,
        "finished_at_s": outcome.finished_at_s, "ingress_id": ingress_id, "ingress_region": ingress_region,
        "tenant": tenant, "model": model, "sla_class": sla_class, "attempts": outcome.attempts,
        "status_code": outcome.status_code, "error_code": safe_error_code(outcome.error_code),
        "streamed": outcome.streamed, "ttft_s": outcome.ttft_s, "e2e_s": outcome.e2e_s,
        "input_tokens": outcome.input_tokens, "output_tokens": outcome.output_tokens,
    }
    if decision is not None:
        entry.update(decision_columns(decision, redact), snapshot_age_s=snapshot_age_s)
    return entry


def recovered_row(entry: Mapping[str, Any], *, fleet: FleetSpec, policy: PlacementPolicy,
                  recovered_by: str) -> dict[str, Any]:
    """The audit row rebuilt from a journal entry by the replica ``recovered_by``: the entry's
    columns as they are; ``tpot_s`` from its times; the fleet's columns (``substrate_columns``,
    ``sla_columns``) when ``policy`` is the config the entry was written under, else null (a
    spillover's boundary then ``jurisdiction``); ``decision_json`` null. Raises ``KeyError`` or
    ``TypeError`` on an entry that is not one."""
    outcome = RequestOutcome(
        status_code=entry["status_code"], error_code=entry["error_code"], attempts=entry["attempts"],
        ttft_s=entry["ttft_s"], e2e_s=entry["e2e_s"], input_tokens=entry["input_tokens"],
        output_tokens=entry["output_tokens"], streamed=entry["streamed"], finished_at_s=entry["finished_at_s"])
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(spillover=False, boundary="none", candidate_count=0, eligible_count=0, rejection_counts={})
    row.update((k, v) for k, v in entry.items() if k in _COLUMN_SET)
    row.update(schema_version=AUDIT_SCHEMA_VERSION, time=_utc(entry["received_at_s"]),
               finished_at=_utc(outcome.finished_at_s), tpot_s=outcome.tpot_s, decision_json=None,
               recovered_by=recovered_by)
    if entry["config"] == policy.policy_hash:
        row.update(substrate_columns(fleet, row["substrate"], row["primary_substrate"], row["spillover"], outcome,
                                     row["ingress_region"]))
        row.update(sla_columns(policy.sla_classes.get(row["sla_class"] or ""), row["sla_class"], outcome))
    elif row["spillover"]:
        row["boundary"] = "jurisdiction"
    return row


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# -------------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True, slots=True)
class SegmentName:
    """``<writer>@<host>@<pid>@<seq>.jsonl``: who wrote the segment, on which host, from which process."""

    writer: str
    host: str
    pid: int
    seq: int

    @property
    def filename(self) -> str:
        return f"{self.writer}@{self.host}@{self.pid}@{self.seq:010d}.jsonl"

    @classmethod
    def parse(cls, filename: str) -> SegmentName | None:
        m = _SEGMENT_RE.fullmatch(filename)
        return None if m is None else cls(m["writer"], m["host"], int(m["pid"]), int(m["seq"]))


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts; pid 0 and
    below, which ``kill`` reads as process groups, count as running so nothing is adopted)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    """This machine's hostname as segment names carry it."""
    return _HOST_UNSAFE_RE.sub("_", socket.gethostname()) or "localhost"


@dataclass(frozen=True, slots=True)
class SegmentContents:
    entries: list[dict[str, Any]]
    writers: set[str]
    """Every writer that may have written a row for an entry: the entries' ingress replicas and the
    claimants named by markers."""
    bad_lines: int


def read_segment(path: Path) -> SegmentContents:
    """The entries of a segment. A line cut by a kill mid-write is not JSON (the object lacks its
    end); it, and any line that is neither an entry nor a marker, is counted in ``bad_lines``."""
    entries: list[dict[str, Any]] = []
    writers: set[str] = set()
    bad = 0
    for piece in path.read_bytes().split(b"\n"):
        if not piece:
            continue  # the end of the file, or the blank line a marker starts with
        try:
            obj = json.loads(piece)
        except ValueError:
            bad += 1
            continue
        if _is_entry(obj):
            entries.append(obj)
            writers.add(str(obj.get("ingress_id")))
        elif isinstance(obj, dict) and isinstance(obj.get("adopted_by"), str):
            writers.add(obj["adopted_by"])
        else:
            bad += 1
    return SegmentContents(entries, writers, bad)


def _is_entry(obj: object) -> bool:
    """A journal entry of this version, with a request id and a receipt time that is a time (what
    recovery needs to look its row up; ``recovered_row`` checks the rest)."""
    if not (isinstance(obj, dict) and obj.get("v") == ENTRY_VERSION and isinstance(obj.get("request_id"), str)):
        return False
    t = obj.get("received_at_s")
    return isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t < _YEAR_10000_S


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    unwritten: set[str]


class Journal:
    """One writer's journal segments under ``<audit_dir>/_journal/`` (see the module docstring).

    ``write`` runs on the request path; ``written`` is the ``AuditLog``'s ``on_written``; ``claim``
    and ``adopt`` serve ``recover``. All are thread-safe. ``host`` and ``pid`` default to this
    process's (tests pass others to stand in for a writer on another host or a dead one).
    """

    def __init__(self, audit_dir: str | os.PathLike[str], writer_id: str, *, fsync: bool = False,
                 host: str | None = None, pid: int | None = None) -> None:
        if not WRITER_ID_RE.fullmatch(writer_id):
            raise ValueError(f"writer_id {writer_id!r} must match {WRITER_ID_RE.pattern}")
        self._dir = Path(audit_dir) / JOURNAL_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._writer = writer_id
        self._host = this_host() if host is None else _HOST_UNSAFE_RE.sub("_", host)
        self._pid = os.getpid() if pid is None else pid
        self._fsync = fsync
        self._lock = threading.Lock()  # guards everything below
        self._seq = max((n.seq for n in map(SegmentName.parse, os.listdir(self._dir))
                         if n is not None and (n.writer, n.host, n.pid) == (writer_id, self._host, self._pid)),
                        default=0)
        self._fd: int | None = None
        self._open: _Segment | None = None
        self._rotated: list[_Segment] = []
        self._where: dict[str, _Segment] = {}
        self._failed_writes = 0
        self._failing = False

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def writer(self) -> str:
        return self._writer

    @property
    def failed_writes(self) -> int:
        return self._failed_writes

    def segments(self) -> list[Path]:
        """This writer's segments not yet deleted (open first)."""
        with self._lock:
            return [s.path for s in ([self._open] if self._open else []) + self._rotated]

    # -- the request path --------------------------------------------------------------------
    def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` (a ``journal_entry``) as one line. When this returns the line survives a
        kill of this process (a power loss only with ``fsync``). Never raises."""
        try:
            rid = entry["request_id"]
            line = json.dumps(entry, separators=(",", ":"), allow_nan=False).encode() + b"\n"
            with self._lock:
                if self._fd is None:
                    self._open_locked()
                try:
                    if os.write(self._fd, line) != len(line):
                        raise OSError(errno.ENOSPC, "short write to the journal")
                    if self._fsync:
                        os.fsync(self._fd)
                except OSError:
                    self._rotate_locked()  # a partial line stays the last of its file
                    raise
                self._open.unwritten.add(rid)
                self._where[rid] = self._open
                self._failing = False
        except (OSError, KeyError, TypeError, ValueError) as exc:
            with self._lock:
                self._failed_writes += 1
                first, self._failing = not self._failing, True
            if first:
                log.error("journal write failed (%s: %s); answers go out without crash protection until "
                          "a write works again", type(exc).__name__, exc)

    def _open_locked(self) -> None:
        self._seq += 1
        path = self._dir / SegmentName(self._writer, self._host, self._pid, self._seq).filename
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._open = _Segment(path, set())

    def _rotate_locked(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._rotated.append(self._open)
        self._open = None

    # -- the audit log's hook ----------------------------------------------------------------
    def written(self, request_ids: Iterable[str]) -> None:
        """The rows of ``request_ids`` are durably in Parquet: forget them, rotate the open segment,
        and delete every rotated segment left with no unwritten row."""
        with self._lock:
            for rid in request_ids:
                seg = self._where.pop(rid, None)
                if seg is not None:
                    seg.unwritten.discard(rid)
            self._rotate_locked()
            done = [s for s in self._rotated if not s.unwritten]
            self._rotated = [s for s in self._rotated if s.unwritten]
        for seg in done:
            seg.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Rotate and delete every segment whose rows are all written (call it after the audit log's
        ``close``). A segment with a row still unwritten stays, for recovery once this process ends."""
        self.written(())
        left = self.segments()
        if left:
            log.warning("%d journal segments keep rows the audit log did not write; recovered after this "
                        "process ends: %s", len(left), ", ".join(p.name for p in left))

    # -- recovery ----------------------------------------------------------------------------
    def orphans(self) -> list[Path]:
        """Segments of this host whose writing process has ended, oldest first."""
        out = []
        for name in sorted(os.listdir(self._dir)):
            seg = SegmentName.parse(name)
            if seg is not None and seg.host == self._host and seg.pid != self._pid and not pid_running(seg.pid):
                out.append(self._dir / name)
        return out

    def claim(self, orphan: Path) -> Path | None:
        """Take ``orphan`` over: rename it to a segment name of this writer, then append a marker line
        naming this writer. Its new path, or None when another claimant renamed it first."""
        with self._lock:
            self._seq += 1
            target = self._dir / SegmentName(self._writer, self._host, self._pid, self._seq).filename
        try:
            os.rename(orphan, target)
        except FileNotFoundError:
            return None
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        try:  # the leading newline ends a line cut by the kill, so the marker stays readable
            os.write(fd, b"\n" + json.dumps({"adopted_by": self._writer}).encode() + b"\n")
        finally:
            os.close(fd)
        return target

    def adopt(self, path: Path, request_ids: Collection[str]) -> None:
        """Track a claimed segment as a rotated one of this writer's: deleted once the rows of
        ``request_ids`` are written (at once when there are none)."""
        if not request_ids:
            path.unlink(missing_ok=True)
            return
        seg = _Segment(path, set(request_ids))
        with self._lock:
            self._rotated.append(seg)
            for rid in request_ids:
                self._where[rid] = seg


# -------------------------------------------------------------------------------------------------
# Recovery


@dataclass(frozen=True, slots=True)
class Recovery:
    segments: int = 0
    """Orphan segments claimed."""
    rows: int = 0
    """Rows rebuilt and queued on the audit log."""
    already_written: int = 0
    """Entries whose request already had a row."""
    bad_lines: int = 0
    """Lines skipped: cut by a kill mid-write, unreadable, or not an entry ``recovered_row`` takes."""


def recover(journal: Journal, audit: AuditLog, fleet: FleetSpec, policy: PlacementPolicy) -> Recovery:
    """Adopt every orphan segment of this host: queue on ``audit`` a rebuilt row for each entry whose
    request has no row yet (exactly once per request), and have ``journal`` delete the segment once
    they are written. ``fleet`` and ``policy`` are the recovering replica's config. An exception
    after a claim (an unreadable Parquet file, say) leaves the segment claimed by ``journal``'s
    writer, to be adopted again once this process has ended."""
    segments = rows_queued = already = bad = 0
    for orphan in journal.orphans():
        claimed = journal.claim(orphan)
        if claimed is None:
            continue  # another replica claimed it first
        segments += 1
        contents = read_segment(claimed)
        bad += contents.bad_lines
        latest = {e["request_id"]: e for e in contents.entries}
        days = {_utc(e["received_at_s"]).date() for e in latest.values()}
        have = request_ids(audit.directory, contents.writers | {journal.writer}, days)
        rows = []
        for rid, entry in latest.items():
            if rid in have:
                already += 1
                continue
            try:
                rows.append(recovered_row(entry, fleet=fleet, policy=policy, recovered_by=journal.writer))
            except (KeyError, TypeError, ValueError, OverflowError):
                bad += 1
        journal.adopt(claimed, [r["request_id"] for r in rows])  # before the rows can be written
        for row in rows:
            audit.append(row)
        rows_queued += len(rows)
    return Recovery(segments, rows_queued, already, bad)

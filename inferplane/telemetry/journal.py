"""The write-ahead audit journal: a request's record is on disk before its answer leaves, so an
ingress replica killed outright (SIGKILL, ``ray.kill``) loses no audit row of a request it answered.

Why: the ingress builds audit rows in its sync thread (building the decision as JSON was ~8 % of
the request path) and ``AuditLog`` keeps them in memory until its next flush; both buffers die
with the process. The journal is the part of that path that must not, kept small:

- **Line** (``record_line``): the request's frozen ``plane.record.RequestRecord``, final decision
  included, as one compact JSON line (the record's fields by name, the decision's by name, each
  candidate a positional list); ``record_from_line`` reads it back to an equal record. It is not a
  row: rows are built only by ``audit.audit_row``, from the record, in the sync thread or by
  recovery. Client text is redacted before the line is written (``audit.redacted`` with the
  writer's config), so the journal holds no more client text than the audit log: no key, prompt
  or completion, and an unknown model or SLA-class name only as its digest.
- **Write** (``Journal.write``, on the request path before the response's last bytes): redact,
  encode, one ``os.write`` of the line on an ``O_APPEND`` fd. No fsync by default: the line is in
  the kernel's page cache when ``write`` returns, which survives the process being killed but not
  the machine losing power; ``fsync=True`` syncs each line (a disk flush per request). A failed
  write is counted (``failed_writes``), logged once per run of failures, and never fails the request.
- **Lifecycle**: segments rotate whenever the audit log reports a file written (``written``,
  passed to ``AuditLog`` as ``on_written``); a rotated segment is deleted once every request in it
  has its Parquet row in place. A writer thus keeps one or two segments; ``close`` (after the
  audit log's) leaves none unless a row could not be written, which then waits for recovery.
- **Recovery** (``recover``): an orphan is a segment of this host whose pid no longer runs
  (``os.kill(pid, 0)`` raises ``ProcessLookupError``). A replica claims it by renaming it to a
  segment name of its own (atomic: of two claimants, one rename fails), appends a marker line
  naming itself, drops the records whose request already has a row (it reads only the
  ``request_id`` column of the files of the writers that could have written one: the records'
  ingress replicas and every claimant named by a marker), queues the rows of the rest, built by
  ``audit_row(record, fleet, policy, recovered_by=...)`` with its own config, on its own
  ``AuditLog``, and tracks the segment as one of its own: deleted once those rows are written. A
  claimant killed in turn leaves an orphan of its own pid, adopted again, still exactly once. A
  line cut by a kill mid-write (the file's last, without its newline) or otherwise unreadable is
  skipped and counted.

Recovered rows carry ``recovered_by``, the replica that rebuilt them: a nullable column, as no
other can say "rebuilt" without changing what it means (``ingress_id`` must stay the replica that
answered). Since the record carries the decision, a recovered row has its ``decision_json`` too.
The columns ``audit_row`` takes from the config (substrate facts, boundary, deadlines, ``met_sla``,
each candidate's static facts) are the recovering replica's when its policy hash equals the
record's ``config_hash``, else null, and a spillover's boundary is then ``jurisdiction`` (unknown
is never assumed close); cost is the record's, attributed by the replica that answered.

Files: ``DIR/_journal/<writer>@<host>@<pid>@<seq>.jsonl`` beside the audit log's ``DIR/date=...``
partitions; ``_journal`` is skipped by ``pyarrow.dataset`` (leading ``_``) and by ``read_audit``
(``date=`` only). A pid means nothing on another machine, so segments of other hosts are left
alone: on a multi-node cluster sharing one audit directory, each node's segments are recovered by
an ingress replica on that node (those of a node that never returns wait for an operator). A pid
reused by a new process keeps a dead writer's segments waiting until that process ends too.
Lines of an earlier version (``v`` other than ``LINE_VERSION``: version 1 held audit columns, not
records) are counted as unreadable.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferplane.placement.decision import CandidateVerdict, PlacementDecision, SpilloverReason
from inferplane.placement.filters import RejectionCode
from inferplane.placement.fleet import FleetSpec
from inferplane.placement.policy import PlacementPolicy
from inferplane.placement.signals import DriftPenalty
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.audit import (
    DECISION_FIELDS,
    WRITER_ID_RE,
    AuditLog,
    audit_row,
    redacted,
    request_ids,
    utc,
)
from inferplane.telemetry.cost import CostBreakdown

log = logging.getLogger("inferplane.journal")

JOURNAL_DIR = "_journal"
LINE_VERSION = 2
_SEGMENT_RE = re.compile(r"^(?P<writer>[^@]+)@(?P<host>[^@]+)@(?P<pid>\d+)@(?P<seq>\d{10})\.jsonl$")
_HOST_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
_YEAR_10000_S = 253_402_300_800
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_LINE_KEYS = frozenset(_RECORD_FIELDS) | {"v"}
_ADDED_IN_V2 = frozenset({"held_s", "held_reason", "estimated_input_tokens", "dispatched_after_s",
                           "cached_input_tokens", "model_file_sha256"})
"""Record fields added after version 2 lines were first written: a line without them reads with
their defaults (a replica killed before an upgrade leaves such lines)."""
_DECISION_KEYS = frozenset(DECISION_FIELDS)
_DECISION_ADDED_IN_V2 = frozenset({"predicted_output_tokens", "declared_ttft_s", "declared_tpot_s",
                                   "predicted_prefix_hit", "model_version", "rollout"})
"""Decision fields added after version 2 lines were first written (read with their defaults)."""
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # built once: not per request


# -------------------------------------------------------------------------------------------------
# Lines


def record_line(record: RequestRecord) -> bytes:
    """``record`` as one journal line: compact JSON and a newline, the record's and its decision's
    fields by name (tuples, the candidates and the cost included, as lists; enums as their values;
    floats in their shortest exact form). Raises ``ValueError`` on a NaN or an infinity (JSON has
    none). Writes ``record`` as it is: ``Journal.write`` redacts first."""
    line = {name: getattr(record, name) for name in _RECORD_FIELDS}
    d = record.decision
    if d is not None:
        line["decision"] = {name: getattr(d, name) for name in DECISION_FIELDS}
    line["v"] = LINE_VERSION
    return _ENCODER.encode(line).encode() + b"\n"


def record_from_line(obj: Mapping[str, Any]) -> RequestRecord:
    """The record a ``record_line`` (parsed as JSON) holds. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``) on anything else: another version, missing or extra fields, a receipt time that
    is not a time, a candidate of another shape."""
    if not isinstance(obj, dict) or obj.get("v") != LINE_VERSION or not (
            _LINE_KEYS - _ADDED_IN_V2 <= obj.keys() <= _LINE_KEYS):
        raise ValueError("not a journal line of this version")
    if not isinstance(obj["request_id"], str) or not isinstance(obj["ingress_id"], str):
        raise TypeError("request_id and ingress_id must be strings")
    for key in ("received_at_s", "finished_at_s"):
        t = obj[key]
        if not (isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t < _YEAR_10000_S):
            raise ValueError(f"{key} is not a time")
    fields = {name: obj[name] for name in _RECORD_FIELDS if name in obj}
    if fields["decision"] is not None:
        fields["decision"] = _decision_from_line(fields["decision"])
    if fields["cost"] is not None:
        fields["cost"] = CostBreakdown(*fields["cost"])
    return RequestRecord(**fields)


def _decision_from_line(obj: Mapping[str, Any]) -> PlacementDecision:
    if not isinstance(obj, dict) or not (_DECISION_KEYS - _DECISION_ADDED_IN_V2 <= obj.keys() <= _DECISION_KEYS):
        raise ValueError("not a decision")
    fields = dict(obj)
    reason, code = fields["spillover_reason"], fields["rejection_code"]
    fields.update(
        fallbacks=tuple(fields["fallbacks"]), scorer_names=tuple(fields["scorer_names"]),
        spillover_reason=None if reason is None else SpilloverReason(reason),
        rejection_code=None if code is None else RejectionCode(code),
        candidates=tuple(_candidate(c) for c in fields["candidates"]),
    )
    return PlacementDecision(**fields)


def _candidate(values: list) -> CandidateVerdict:
    """A candidate as ``record_line`` wrote it (a line from before ``drift`` has one value less)."""
    c = CandidateVerdict(*values)
    return c._replace(code=None if c.code is None else RejectionCode(c.code),
                      scores=None if c.scores is None else tuple(c.scores),
                      drift=tuple(DriftPenalty(*p) for p in c.drift))


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
    records: list[RequestRecord]
    writers: set[str]
    """Every writer that may have written a row for a record: the records' ingress replicas and the
    claimants named by markers."""
    bad_lines: int


def read_segment(path: Path) -> SegmentContents:
    """The records of a segment, in the order written. A line cut by a kill mid-write is not JSON
    (the object lacks its end); it, and any line that is neither a record (``record_from_line``)
    nor a marker, is counted in ``bad_lines``."""
    records: list[RequestRecord] = []
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
        if isinstance(obj, dict) and "adopted_by" in obj:
            if isinstance(obj["adopted_by"], str):
                writers.add(obj["adopted_by"])
            else:
                bad += 1
            continue
        try:
            record = record_from_line(obj)
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        records.append(record)
        writers.add(record.ingress_id)
    return SegmentContents(records, writers, bad)


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    unwritten: set[str]


class Journal:
    """One writer's journal segments under ``<audit_dir>/_journal/`` (see the module docstring).

    ``fleet`` and ``policy`` are the writer's config: ``write`` redacts each record with them, and
    ``recover`` builds the rows of adopted records with them. ``write`` runs on the request path;
    ``written`` is the ``AuditLog``'s ``on_written``; ``claim`` and ``adopt`` serve ``recover``. All
    are thread-safe. ``host`` and ``pid`` default to this process's (tests pass others to stand in
    for a writer on another host or a dead one).
    """

    def __init__(self, audit_dir: str | os.PathLike[str], writer_id: str, *, fleet: FleetSpec,
                 policy: PlacementPolicy, fsync: bool = False, host: str | None = None,
                 pid: int | None = None) -> None:
        if not WRITER_ID_RE.fullmatch(writer_id):
            raise ValueError(f"writer_id {writer_id!r} must match {WRITER_ID_RE.pattern}")
        self._dir = Path(audit_dir) / JOURNAL_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._writer = writer_id
        self.fleet = fleet
        self.policy = policy
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
    def write(self, record: RequestRecord) -> None:
        """Append ``record``, redacted (``audit.redacted``), as one line (``record_line``). When this
        returns the line survives a kill of this process (a power loss only with ``fsync``). Never
        raises."""
        try:
            rid = record.request_id
            line = record_line(redacted(record, self.fleet, self.policy))
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
        except (OSError, AttributeError, TypeError, ValueError) as exc:
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
    """Records whose request already had a row."""
    bad_lines: int = 0
    """Lines skipped: cut by a kill mid-write, unreadable, or a record ``audit_row`` cannot take."""


def recover(journal: Journal, audit: AuditLog) -> Recovery:
    """Adopt every orphan segment of this host: queue on ``audit`` the row (``audit_row`` with the
    journal's ``fleet`` and ``policy``, ``recovered_by`` its writer) of each record whose request
    has no row yet (exactly once per request; the last record of a request id if it has several),
    and have ``journal`` delete the segment once they are written. An exception after a claim (an
    unreadable Parquet file, say) leaves the segment claimed by ``journal``'s writer, to be
    adopted again once this process has ended."""
    segments = rows_queued = already = bad = 0
    for orphan in journal.orphans():
        claimed = journal.claim(orphan)
        if claimed is None:
            continue  # another replica claimed it first
        segments += 1
        contents = read_segment(claimed)
        bad += contents.bad_lines
        latest = {r.request_id: r for r in contents.records}
        days = {utc(r.received_at_s).date() for r in latest.values()}
        have = request_ids(audit.directory, contents.writers | {journal.writer}, days)
        rows = []
        for rid, record in latest.items():
            if rid in have:
                already += 1
                continue
            try:
                rows.append(audit_row(record, journal.fleet, journal.policy, recovered_by=journal.writer))
            except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
                bad += 1
        journal.adopt(claimed, [r["request_id"] for r in rows])  # before the rows can be written
        for row in rows:
            audit.append(row)
        rows_queued += len(rows)
    return Recovery(segments, rows_queued, already, bad)

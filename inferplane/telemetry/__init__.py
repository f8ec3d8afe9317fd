"""Placement telemetry: what every request cost, the audit log of every decision, and the metrics.

Each is a function of the request's frozen ``plane.record.RequestRecord`` (made once, when the
request ends): ``audit.audit_row(record, fleet, policy)`` is the only builder of an audit row,
``journal.Journal.write(record)`` journals it, ``metrics.MetricsDelta.record_request(record)``
counts it.

- ``cost``: the cost of a finished request from its substrate's cost model.
- ``audit``: the versioned Parquet audit log, one row per request, derived from its record.
- ``journal``: the write-ahead journal of records that keeps a killed ingress replica's answered
  requests in the audit log.
- ``metrics``: Prometheus metrics, recorded per ingress replica as picklable deltas and merged in
  the placement actor, so that one scrape endpoint is correct across every replica.
"""

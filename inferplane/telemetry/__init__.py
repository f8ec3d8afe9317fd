"""Placement telemetry: what every request cost, the audit log of every decision, and the metrics.

- ``cost``: the cost of a finished request from its substrate's cost model.
- ``audit``: the versioned Parquet audit log, one row per request, derived from the decision.
- ``journal``: the write-ahead journal that keeps a killed ingress replica's answered requests in
  the audit log.
- ``metrics``: Prometheus metrics, recorded per ingress replica as picklable deltas and merged in
  the placement actor, so that one scrape endpoint is correct across every replica.
"""

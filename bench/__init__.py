"""Benchmarks of the incident ledger: ``python -m bench`` (``make bench``).

- harness: closed-loop and open-loop load drivers over worker threads, percentiles.
- stores: fresh SQLite files and PostgreSQL schemas, like the tests use.
- scenarios: the gRPC echo ceiling, the eventsourcing append ceiling, the ledger over
  gRPC (closed loop and paced), and the server's RSS against the number of incidents.
- report: the printed tables and the targets.
"""

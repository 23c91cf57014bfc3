"""Benchmarks of the incident ledger: ``python -m bench`` (``make bench``).

- targets: every speed target as a ratio to a ceiling measured in the same run, PASS/MISS.
- harness: closed-loop and open-loop load drivers over worker threads, percentiles.
- loadgen: the client load, from child processes.
- stores: fresh SQLite files and PostgreSQL schemas, like the tests use.
- echo: the gRPC echo server (``python -m bench.echo``), the ceiling of a command.
- scenarios: the echo ceiling, the append ceiling, the ledger over gRPC (its own
  process; closed loop and paced), and its RSS against the number of incidents.
- fanout: the relay and its plain-publish ceiling, commit -> subscriber and webhook
  latency, NATS alone.
- history: projection rebuild, verify and export over a long history, against the
  library's decode.
- scaleout (and scaleout_report): one and two ledger processes on PostgreSQL.
- cpu, logs: CPU time of the processes over a window; what the service processes logged.
- report: the printed tables.
"""

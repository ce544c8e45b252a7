"""The worker's runtime: what one ``runworker`` process does with the jobs it claims.

``worker`` (the loop: claim → run → heartbeat → finish), ``execution`` (one attempt of a
job, turned into an Outcome), ``pool`` (the threads for sync handlers), ``completer``
(the fenced finish writes), ``heartbeats`` (the worker's own row, heartbeated on the
database clock), ``listener`` (LISTEN for new jobs on PostgreSQL) and ``events`` (one log
line and the metrics per job event). The console never imports this package.
"""

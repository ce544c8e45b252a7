"""Enqueue the fault suite's jobs through the engine's front door (``enqueue_many``).

Run as a subprocess with DATABASE_URL naming the throwaway database. Reads one request
per line on stdin, ``<run_id> <count> <work_seconds>``, and answers each with one line:
the new jobs' ids as JSON. The suite enqueues only outside a fault's window, so a
database error here is one the fault left behind (a connection it cut, a server it
restarted): the connection is closed and the batch retried, within a minute.
"""

from __future__ import annotations

import json
import sys
import time

import django


def main() -> int:
    django.setup()
    from django.db import Error as DatabaseError
    from django.db import connection

    from tests.faults.tasks import mark

    for line in sys.stdin:
        run_id, count, work_seconds = line.split()
        calls = [(run_id, float(work_seconds))] * int(count)
        deadline = time.monotonic() + 60
        while True:
            try:
                results = mark.enqueue_many(calls)
                break
            except DatabaseError:
                connection.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sys.stdout.write(json.dumps([int(r.id) for r in results]) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

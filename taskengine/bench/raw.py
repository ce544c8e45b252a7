"""The machine's raw limits, measured in the same run by the project's own scripts:
pgbench running raw_claim.pgbench.sql against a scratch table loaded by
raw_claim.setup.sql (the drain's limit), pgbench inserting one job per transaction (the
single enqueue's limit), and a plain COPY of the bulk phase's rows into a table of the
job table's shape (raw_copy.sql, the bulk enqueue's limit). Every script ships inside
the package, so ``manage.py benchmark`` measures the same from an installed wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from taskengine.db import queries

from .base import BenchBase, database_url

# The raw limit's defaults: the batch a claim takes and the queued rows it starts from
# (enough that 2 clients do not run dry in a 15-second run on a fast machine).
RAW_CLAIM_BATCH = 50
RAW_CLAIM_ROWS = 1_000_000


def _statements(filename: str) -> queries.Statements:
    return queries.parse_blocks(resources.files(__package__).joinpath(filename).read_text())


def _tps(stdout: str) -> float:
    tps = re.search(r"^tps = ([0-9.]+)", stdout, re.MULTILINE)
    if tps is None:
        raise RuntimeError(f"pgbench printed no tps: {stdout[-500:]}")
    return float(tps.group(1))


class RawLimits(BenchBase):
    def raw_single_insert(self, seconds: int) -> float | None:
        """The machine's limit for enqueue_single: pgbench (C, libpq, prepared) inserting
        one job per transaction into the same table, with the same trigger and indexes,
        on this queue. None where there is no PostgreSQL or no pgbench."""
        if not self.postgres or shutil.which("pgbench") is None:
            return None
        queue = self.queue.replace("'", "''")
        statement = (  # the columns insert_job writes, as literals
            "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after, "
            "enqueued_at, attempts, max_attempts, on_lease_expired) "
            f"VALUES ('{self.task.module_path}', 'benchmark', '{queue}', 0, '[]', '{{}}', 'queued', now(), "
            "now(), 0, 3, 'retry') RETURNING id, enqueued_at;\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(statement)
            script.flush()
            command = ["pgbench", "-n", "-M", "prepared", "-f", script.name, "-c", "1", "-T", str(seconds)]
            out = subprocess.run(
                [*command, database_url(self.connection.settings_dict)], capture_output=True, text=True, check=True
            )
        return _tps(out.stdout)

    def raw_copy(self, batch: int = 10_000) -> float | None:
        """The machine's limit for enqueue_bulk: the rows the bulk phase just wrote
        (read back first, untimed), COPYed into a scratch table of the job table's shape
        in transactions of ``batch`` rows, as enqueue_bulk commits. Rows per second;
        None where there is no PostgreSQL or no bulk rows."""
        if not self.postgres:
            return None
        import psycopg

        blocks = _statements("raw_copy.sql")
        with psycopg.connect(self._conninfo()) as conn:
            out = psycopg.ClientCursor(conn).mogrify(blocks["rows_out"], {"queue": self.queue})
            with conn.cursor().copy(out) as copy:
                lines = b"".join(bytes(chunk) for chunk in copy).splitlines(keepends=True)
            if not lines:
                return None
            conn.execute(blocks["drop_scratch"])
            conn.execute(blocks["create_scratch"])
            conn.commit()
            try:
                started = time.perf_counter()
                for at in range(0, len(lines), batch):
                    with conn.cursor().copy(blocks["rows_in"]) as copy:
                        copy.write(b"".join(lines[at : at + batch]))
                    conn.commit()
                seconds = time.perf_counter() - started
            finally:
                conn.rollback()
                conn.execute(blocks["drop_scratch"])
                conn.commit()
        return len(lines) / seconds

    def raw_limit(
        self,
        seconds: int,
        script: Path | None = None,
        *,
        clients: int = 2,
        batch: int = RAW_CLAIM_BATCH,
        rows: int = RAW_CLAIM_ROWS,
    ) -> float | None:
        """The machine's limit for the drain: ``clients`` pgbench clients running
        ``script`` (default: this package's raw_claim.pgbench.sql, claim ``batch`` jobs
        with FOR UPDATE SKIP LOCKED and finish them in one transaction) for ``seconds``
        against ``rows`` queued jobs in a scratch database created beside the engine's
        and dropped afterwards. Jobs per second; None where there is no PostgreSQL or no
        pgbench."""
        if not self.postgres or shutil.which("pgbench") is None:
            return None
        with self.scratch_database("taskengine_raw_claim") as scratch:
            self.log(f"raw claim limit: {rows} queued jobs in the scratch database {scratch}")
            return self._run_raw_claim(scratch, seconds, script, clients=clients, batch=batch, rows=rows)

    def _run_raw_claim(
        self, scratch: str, seconds: int, script: Path | None, *, clients: int, batch: int, rows: int
    ) -> float:
        import psycopg

        setup = _statements("raw_claim.setup.sql")
        with psycopg.connect(self._conninfo(scratch), autocommit=True) as conn:
            conn.execute(setup["create_table"])
            conn.execute(setup["load_queued"], {"rows": rows})
            conn.execute(setup["create_claim_index"])
            conn.execute(setup["settle"])
            with resources.as_file(resources.files(__package__).joinpath("raw_claim.pgbench.sql")) as packaged:
                out = subprocess.run(
                    [
                        *("pgbench", "--no-vacuum", "--file", str(script or packaged), "--define", f"batch={batch}"),
                        *("--client", str(clients), "--jobs", str(clients), "--time", str(seconds)),
                        self._conninfo(scratch),
                    ],
                    capture_output=True,
                    text=True,
                )
            if out.returncode != 0:
                raise RuntimeError(f"pgbench failed ({out.returncode}): {(out.stderr or out.stdout)[-1000:]}")
            counted = conn.execute(setup["count_queued"]).fetchone()
            assert counted is not None  # count(*) returns one row
            queued = int(counted[0])
        tps = _tps(out.stdout)
        transactions = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.MULTILINE)
        if transactions is None or int(transactions.group(1)) == 0:
            raise RuntimeError(f"pgbench reported no transactions: {out.stdout[-1000:]}")
        if queued < clients * batch:
            raise RuntimeError(f"the raw claim ran out of its {rows} queued jobs in {seconds}s: load more rows")
        # Jobs per transaction from the rows actually finished, not the nominal batch.
        return tps * (rows - queued) / int(transactions.group(1))

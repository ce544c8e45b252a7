"""Autovacuum settings of the job table (PostgreSQL; nothing on SQLite).

Every job is two non-HOT updates (claim and finish change ``state``, which is in index
predicates), so a busy queue leaves two dead tuples per job and one dead entry per job
in the claim index. With the server's defaults autovacuum waits for dead tuples worth
20 % of the table (``autovacuum_vacuum_scale_factor`` 0.2): on a table of 1,000,000
kept jobs, 200,000 dead tuples, and the benchmark's 2-minute sustained runs saw no
autovacuum of ``taskengine_job`` at all while its dead tuples and the claim index's
dead entries grew with every job (docs/performance.md, "Sustained load"). The claim
walks the claim index from its start: dead entries there are read by every claim until
a vacuum (or the scans' own index cleanup) removes them.

So the job table is vacuumed after a fixed number of dead tuples, not a share of it:

- ``autovacuum_vacuum_scale_factor = 0`` and ``autovacuum_vacuum_threshold = 10000``:
  a vacuum once 10,000 dead tuples (5,000 jobs) have built up, whatever the table's size.
- ``autovacuum_vacuum_insert_scale_factor = 0`` and ``autovacuum_vacuum_insert_threshold
  = 50000``: bulk-inserted queues get their visibility map set (index-only scans of the
  claim index's queued entries) without waiting for 20 % of the table.
- ``autovacuum_analyze_scale_factor = 0.02``: statistics follow the queue's size.
- ``autovacuum_vacuum_cost_delay = 1`` (ms; the server default is 2): a vacuum of this
  hot, mostly-cached table finishes sooner. Not 0: the table can be large, and an
  unthrottled vacuum would compete for I/O with the claims it is meant to help.
- ``fillfactor = 90``: free space on new pages, so the updates that can be HOT (the
  heartbeat's lease renewal, the cancel request) stay on their page.

The server's ``autovacuum_naptime`` (1 minute by default) still decides how often a
worker looks; it is a server-wide setting a migration cannot change per table.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

SETTINGS = (
    "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000, "
    "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 50000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1, fillfactor = 90"
)
NAMES = (
    "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay, fillfactor"
)


def set_storage(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE taskengine_job SET ({SETTINGS})")


def reset_storage(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE taskengine_job RESET ({NAMES})")


class Migration(migrations.Migration):
    dependencies = [
        ("taskengine", "0010_bulk_operation"),
    ]

    operations = [
        migrations.RunPython(set_storage, reset_storage, elidable=False),
    ]

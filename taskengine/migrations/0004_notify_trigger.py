"""PostgreSQL only: wake LISTENing workers when due jobs are inserted.

A statement-level trigger sends one NOTIFY per queue per statement (a bulk enqueue of
10,000 jobs sends one), and Postgres delivers it only when the transaction commits —
so a worker never wakes for a job it cannot yet see. SQLite workers poll instead.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

CREATE = """
CREATE OR REPLACE FUNCTION taskengine_notify_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskengine_jobs', queue)
       FROM (SELECT DISTINCT queue FROM new_jobs WHERE state = 'queued' AND run_after <= now()) AS due;
    RETURN NULL;
END;
$$;
CREATE TRIGGER taskengine_job_notify
    AFTER INSERT ON taskengine_job
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskengine_notify_jobs();
"""

DROP = """
DROP TRIGGER IF EXISTS taskengine_job_notify ON taskengine_job;
DROP FUNCTION IF EXISTS taskengine_notify_jobs();
"""


def create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("taskengine", "0003_backfill_user_id_str")]

    operations = [migrations.RunPython(create, drop)]

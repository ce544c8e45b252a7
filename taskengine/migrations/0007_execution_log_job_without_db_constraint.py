"""Drop the database foreign key from task_execution_logs.job_id to taskengine_job.

Every attempt row the claim inserted made PostgreSQL check the key at commit: one
query and a FOR KEY SHARE row lock (a WAL record) on the job per attempt — a third of
the drain's throughput in the benchmark (docs/performance.md). The relation stays in
Django (ORM deletes still cascade) and the engine keeps it by construction: attempt
rows are inserted only by the claim, for the jobs that statement leased, and deleted
only by retention, with their job, while it holds the job's row lock.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("taskengine", "0006_heartbeat_hot_update"),
    ]

    operations = [
        migrations.AlterField(
            model_name="executionlog",
            name="job",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="attempt_logs",
                to="taskengine.job",
            ),
        ),
    ]

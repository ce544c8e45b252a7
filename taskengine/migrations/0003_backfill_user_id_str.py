"""Fill task_execution_logs.user_id_str from the legacy integer user_id, in bounded
batches by primary key. Safe to rerun: it only touches rows still missing the value.
Big tables can skip this here and run ``manage.py backfill_user_ids`` instead."""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps
from django.db.models import CharField
from django.db.models.functions import Cast

BATCH_SIZE = 5000


def backfill(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    ExecutionLog = apps.get_model("taskengine", "ExecutionLog")
    db = schema_editor.connection.alias
    pending = ExecutionLog.objects.using(db).filter(user_id__isnull=False, user_id_str__isnull=True)
    last_id = 0
    while True:
        ids = list(pending.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:BATCH_SIZE])
        if not ids:
            break
        ExecutionLog.objects.using(db).filter(id__in=ids, user_id_str__isnull=True).update(
            user_id_str=Cast("user_id", output_field=CharField())
        )
        last_id = ids[-1]


class Migration(migrations.Migration):
    atomic = False  # one short transaction per batch, not one long one

    dependencies = [("taskengine", "0002_execution_log_user_id_str")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True)]

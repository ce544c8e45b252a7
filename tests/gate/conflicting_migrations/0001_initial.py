"""Fake migrations for the ``project`` app: two leaves after 0001 (a conflict). Tests only."""

from django.db import migrations


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []
    operations: list = []

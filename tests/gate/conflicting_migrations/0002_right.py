from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("project", "0001_initial")]
    operations: list = []

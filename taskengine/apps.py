from django.apps import AppConfig


class TaskEngineConfig(AppConfig):
    name = "taskengine"
    verbose_name = "Task engine"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imports and signal receivers only: no queries and no threads at start-up.
        from django.db.models.signals import pre_delete

        from taskengine import checks, conf  # noqa: F401 - imported for their receivers and checks
        from taskengine.ops import audit

        from .models import TenantMembership

        pre_delete.connect(
            audit.record_cascaded_membership_delete,
            sender=TenantMembership,
            dispatch_uid="taskengine.ops.audit.cascaded_membership_delete",
        )

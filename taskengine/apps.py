from django.apps import AppConfig


class TaskEngineConfig(AppConfig):
    name = "taskengine"
    verbose_name = "Task engine"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Only imports: no queries and no threads at start-up.
        from . import checks, conf  # noqa: F401

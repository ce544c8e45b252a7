"""Create the quick start's local superuser (admin / admin) if no superuser exists.
Refuses to run with DEBUG off: this is for a laptop, never for production."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the local quick-start superuser admin/admin (DEBUG only)."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("quickstart_admin only runs with DEBUG=True")
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        User.objects.create_superuser("admin", "admin@example.com", "admin")
        self.stdout.write("created superuser admin / admin")

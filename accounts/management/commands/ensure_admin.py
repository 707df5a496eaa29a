"""Create the first administrator once, and say how to log in."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from ruddervirt.settings import VAR_DIR


class Command(BaseCommand):
    help = "Create the first administrator account if there is none, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        credentials = VAR_DIR / "admin-credentials.txt"
        if User.objects.filter(is_superuser=True).exists():
            where = f" (first password in {credentials})" if credentials.exists() else ""
            self.stdout.write(f"Administrator account exists{where}.")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        credentials.parent.mkdir(parents=True, exist_ok=True)
        credentials.write_text(f"username: {username}\npassword: {password}\n")
        credentials.chmod(0o600)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created administrator '{username}' with password '{password}' "
                f"(also saved in {credentials}; change it after logging in)."
            )
        )

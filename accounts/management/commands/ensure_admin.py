"""Create the first administrator once, and say how to log in.

The password is printed on the run that creates the account, and only then; it stays in
``var/admin-credentials.txt``, created 0600 (never readable by anyone else, not even for a
moment) and replaced atomically.
"""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from ruddervirt import hostfiles

CREDENTIALS_FILE = "admin-credentials.txt"


class Command(BaseCommand):
    help = "Create the first administrator account if there is none, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        credentials = Path(settings.VAR_DIR) / CREDENTIALS_FILE
        if User.objects.filter(is_superuser=True).exists():
            where = f" (first password in {credentials})" if credentials.exists() else ""
            self.stdout.write(f"Administrator account exists{where}.")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        hostfiles.write_private(credentials, f"username: {username}\npassword: {password}\n")
        self.stdout.write(
            self.style.SUCCESS(
                f"Created administrator '{username}' with password '{password}' "
                f"(also saved in {credentials}; change it after logging in)."
            )
        )

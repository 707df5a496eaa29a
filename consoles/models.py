"""Console tokens: the one-time tickets a browser trades for a WebSocket to a VM's VNC."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ConsoleToken(models.Model):
    """A ticket to open one console once.

    Only the SHA-256 of the token is stored: the token itself lives in the browser for a few
    seconds and in nobody's database or log. A token is bound to its user and its target
    (kind, object id, VM name); `used_at` marks it spent.
    """

    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="console_tokens"
    )
    kind = models.CharField(max_length=20)
    object_id = models.PositiveBigIntegerField()
    vm = models.CharField(max_length=63)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"console {self.kind}/{self.object_id}/{self.vm} for {self.user_id}"

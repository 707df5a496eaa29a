from django.contrib import admin

from consoles.models import ConsoleToken


@admin.register(ConsoleToken)
class ConsoleTokenAdmin(admin.ModelAdmin):
    """Who opened which console, when (read-only: tokens are only ever made by the portal)."""

    list_display = ("created_at", "user", "kind", "object_id", "vm", "used_at")
    list_filter = ("kind",)
    search_fields = ("user__username", "vm")
    readonly_fields = [f.name for f in ConsoleToken._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

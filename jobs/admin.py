from django.contrib import admin

from jobs.models import Operation


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "target_type", "target_id", "status", "worker", "created_at")
    list_filter = ("status", "kind")
    readonly_fields = [f.name for f in Operation._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

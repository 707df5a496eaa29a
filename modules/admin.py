from django.contrib import admin

from modules.models import ManifestRevision, Module


class RevisionInline(admin.TabularInline):
    model = ManifestRevision
    fields = ("number", "sha256", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Module)
class ModuleAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "updated_at")
    search_fields = ("name", "description")
    inlines = [RevisionInline]

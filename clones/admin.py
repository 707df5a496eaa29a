from django.contrib import admin

from clones.models import AccountSetup, Class, ClassMembership, Clone, CloneVM


class MembershipInline(admin.TabularInline):
    model = ClassMembership
    extra = 0
    raw_id_fields = ("student",)


@admin.register(Class)
class ClassAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "adhoc", "created_at")
    search_fields = ("name",)
    filter_horizontal = ("instructors",)
    inlines = [MembershipInline]


class CloneVMInline(admin.TabularInline):
    model = CloneVM
    extra = 0
    can_delete = False
    fields = ("name", "domain_name", "state", "mgmt_port", "invisible")
    readonly_fields = fields


@admin.register(Clone)
class CloneAdmin(admin.ModelAdmin):
    # Read-only here: state changes go through the class dashboard (they drive libvirt).
    list_display = ("pk", "klass", "student", "version", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("student__username", "klass__name")
    readonly_fields = ("klass", "student", "version", "status", "error", "note")
    inlines = [CloneVMInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AccountSetup)
class AccountSetupAdmin(admin.ModelAdmin):
    list_display = ("user", "must_set_password", "created_at", "expires_at", "used_at")
    readonly_fields = ("token_digest",)

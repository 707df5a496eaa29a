"""Who may open the console of a clone's VM (the "clone" kind of consoles.registry)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from clones.models import Clone
from clones.services import can_teach, is_enrolled_student


def resolve(user, clone_id: int, vm_name: str) -> str:
    """The libvirt domain name of VM `vm_name` of clone `clone_id` when `user` may open its
    console: the clone's student while in its class (not for VMs marked invisible), the
    instructors of its class, administrators. PermissionDenied (403) otherwise; Http404
    when the clone or VM does not exist. Whether the user may see the clone is decided
    before the VM is looked up, so a 404 never tells a stranger which VMs a clone has.
    The console consumer asks again while a console is open (consoles.services.recheck)."""
    if not getattr(user, "is_authenticated", False):
        raise PermissionDenied("log in to open a console")
    clone = Clone.objects.select_related("klass").filter(pk=clone_id).first()
    if clone is None:
        raise Http404("no such clone")
    teacher = can_teach(user, clone.klass)
    if not teacher and not is_enrolled_student(user, clone):
        if clone.student_id == user.pk:
            raise PermissionDenied("you are no longer a student of this lab's class")
        raise PermissionDenied("this lab belongs to another student")
    vm = clone.vms.filter(name=vm_name).first()
    if vm is None:
        raise Http404(f"clone {clone_id} has no VM {vm_name!r}")
    if vm.invisible and not teacher:
        raise PermissionDenied(f"VM {vm_name} has no console for students")
    return vm.domain_name


def note_activity(clone_id: int) -> None:
    """Someone used one of the clone's consoles (consoles.registry calls this, throttled):
    postpones the clone's inactivity shutdown."""
    from clones.services import note_console_activity

    note_console_activity(clone_id)

#!/bin/sh
# ACPI power button (virsh shutdown): a clean power-off through busybox init.
logger -t acpid "power button pressed: powering off"
exec /sbin/poweroff

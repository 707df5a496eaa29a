"""The hypervisor layer: specs, XML builders, disk and seed tools, drivers (no Django)."""

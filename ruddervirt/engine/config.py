"""Engine settings, passed in by the caller (Django settings in the portal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.fetchpolicy import FetchPolicy
from ruddervirt.hypervisor.specs import DomainType

__all__ = ["EngineConfig", "FetchPolicy"]


@dataclass(frozen=True)
class EngineConfig:
    storage_root: Path
    domain_type: DomainType = "kvm"
    name_prefix: str = "rv-"
    allow_internet: bool = True
    # Shutdown: the guest's own poweroff, then ACPI, then a forced stop.
    guest_poweroff_timeout_s: float = 60.0
    acpi_timeout_s: float = 30.0
    # Convert captured disks with compression (smaller templates, slower capture).
    compress_templates: bool = False
    # bootCommand pace: the pause after each key (or chord) sent to the console. Installers
    # under TCG on a busy host drop keys sent faster than they read them.
    boot_key_interval_s: float = 0.1
    # How long a key is held down (0: the hypervisor's default).
    boot_key_hold_ms: int = 0
    # What sources may be downloaded from, and how much (docs/security.md).
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    # The step cache (engine.stepcache): off altogether, its size cap (bytes of layers on
    # disk, None: no cap) and how long an unused checkpoint is kept (None: no limit).
    step_cache: bool = True
    step_cache_max_bytes: int | None = None
    step_cache_max_age_s: float | None = None

    @property
    def cache_dir(self) -> Path:
        return self.storage_root / "cache" / "images"

    @property
    def files_cache_dir(self) -> Path:
        return self.storage_root / "cache" / "files"

    @property
    def step_cache_dir(self) -> Path:
        return self.storage_root / "cache" / "steps"

    @property
    def iso_cache_dir(self) -> Path:
        """ISOs live apart from disk images: they are evicted after `isoCacheTTL`."""
        return self.storage_root / "cache" / "isos"

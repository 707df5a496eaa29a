"""Every default of the manifest, in one place (see /work/shared/manifest.md).

Values marked (ours) are choices of RudderVirt where the manifest format is silent.
"""

from __future__ import annotations

from typing import Final

GI = 1024**3
MI = 1024**2

# Top level.
TIMEOUT_SECONDS = 30 * 60.0
RETRIES = 0
MAX_RETRIES = 10  # (ours) a bound on automatic retries of a failing build
ISO_CACHE_TTL_SECONDS = 24 * 3600.0

# VMs.
CPU = 1
MEMORY_BYTES = 1 * GI
MIN_MEMORY_BYTES = 64 * MI
DISK_NAME = "root"
DISK_SIZE_BYTES = 20 * GI  # also the size of a declared disk without `size` (ours)
MIN_DISK_SIZE_BYTES = 1 * MI
DISK_BUS: Final = "virtio"  # also the bus of a declared disk without `bus` (ours)

# Communicator.
COMMUNICATOR_TYPE: Final = "ssh"
SHELL: Final = "bash"
SSH_USERNAME = "root"
SSH_PORT = 22
SSH_TIMEOUT_SECONDS = 5 * 60.0

# Networking. Without `network`, the module gets one VPC with internet and one subnet;
# 10.77.0.0/24 (ours) is the fixed CIDR of that default subnet; its gateway/DNS is 10.77.0.1.
NETWORK_NAME = "default"  # the name of both the default VPC and the default subnet
SUBNET_CIDR = "10.77.0.0/24"
DEFAULT_VPC_INTERNET = True
DECLARED_VPC_INTERNET = False
SUBNET_DHCP = True
NIC_NAME = "eth0"
NIC_MODEL: Final = "virtio"  # (ours)

# Provisioners.
REBOOT_COMMAND = {"bash": "sudo reboot", "powershell": "shutdown /r /f /t 0"}
# (ours) the usual Windows Update defaults of Packer's windows-update provisioner.
WINDOWS_UPDATE_SEARCH = "BrowseOnly=0 and IsInstalled=0"
WINDOWS_UPDATE_FILTERS = ("exclude:$_.Title -like '*Preview*'", "include:$true")
WINDOWS_UPDATE_LIMIT = 1000

"""A clone's own NoCloud seed: a new cloud-init instance with the module's addresses.

Made from the version's record only (never the manifest): the VM's NIC records, the
topology's subnets, the instructor's networkData kept in its CloudInitRecord and the build's
management MAC. See ruddervirt.engine.clone for when clones get one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from ruddervirt.engine import netconfig
from ruddervirt.hypervisor.seed import clone_cloud_config, make_nocloud_seed, nocloud_meta_data
from ruddervirt.spec import TopologyRecord, VMSpec


def instance_id(domain: str) -> str:
    """A cloud-init instance id unique to this clone domain and these disks: a clone made
    again (reprovision) is a new instance too."""
    return f"{domain}-{uuid.uuid4().hex[:12]}"


def instance_of(vm: VMSpec, domain: str) -> str:
    """The instance id of clone domain `domain`: the build's own when the VM was not
    generalized (its clones keep the build's identity), else a new one."""
    kept = vm.cloud_init.instance_id if vm.cloud_init is not None else None
    return kept or instance_id(domain)


def network_config(vm: VMSpec, topology: TopologyRecord) -> str:
    """The same network config the build's seed had, from the version's records."""
    network_data = vm.cloud_init.network_data if vm.cloud_init is not None else None
    return netconfig.render_for_subnets(
        vm.nics, topology.subnets, mgmt_mac=vm.mgmt.mac, user_network=network_data
    )


def write(path: Path, vm: VMSpec, topology: TopologyRecord, *, domain: str) -> None:
    """Write the seed ISO of clone domain `domain` of `vm` to `path`."""
    network = network_config(vm, topology)
    make_nocloud_seed(
        path,
        user_data=clone_cloud_config(vm.name, netconfig.name_servers(network)),
        meta_data=nocloud_meta_data(instance_id=instance_of(vm, domain), hostname=vm.name),
        network_config=network,
    )

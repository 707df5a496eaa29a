"""Typing a VM's bootCommand into its console through the hypervisor's send-key."""

from __future__ import annotations

import time

from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.guest import bootcommand

KEY_INTERVAL_S = 0.05


def type_boot_command(runner) -> None:
    """Send every token of the VM's bootCommand, waiting where it says <waitN>."""
    text = "".join(runner.vm.boot_command)
    try:
        events = bootcommand.key_events(bootcommand.tokenize(text))
    except bootcommand.BootCommandError as exc:
        raise BuildError(f"VM {runner.vm.name}: bootCommand: {exc}") from exc
    runner.log(f"typing the boot command ({len(events)} events)")
    for event in events:
        if runner.stopper.stopped:
            raise BuildCancelled(runner.stopper.reason)
        if isinstance(event, bootcommand.WaitEvent):
            if runner.stopper.wait(event.seconds):
                raise BuildCancelled(runner.stopper.reason)
            continue
        runner.hv.send_keys(runner.domain, list(event.keycodes))
        time.sleep(KEY_INTERVAL_S)

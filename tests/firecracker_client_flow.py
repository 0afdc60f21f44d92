"""Drives `vmm run --api-sock` with the unmodified Firecracker client from
PyPI (`firecracker-python`, installed by
resources/firecracker-python/setup-venv.sh), step for step as its
`MicroVM.create()` drives Firecracker once `_run_firecracker()` has started
the binary: boot source, root drive, machine config, network interface,
vsock, `InstanceStart`. Then its `VMMManager` reads the state, the
configuration and the guest's IP back, and pauses and resumes the VM.

Used by tests/tests/firecracker_python.rs, which starts the VMM (as
`firecracker --api-sock ... --id ... --log-path ...`, the client's own
command line) and checks what the guest does. Every step prints one line
`RESULT <json>` on stdout; the client's own prints (e.g. its warning that
/usr/local/bin/firecracker is missing) do not start with RESULT.

    flow.py create SPEC_JSON    configure and start (SPEC: see `create`)
    flow.py pause ID | resume ID | state ID
"""

import json
import sys
import time

from firecracker.api import Api
from firecracker.exceptions import APIError
from firecracker.vmm import VMMManager


def result(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


def socket_of(vm_id):
    # Where the client keeps a VM's API socket: VMMManager.get_api().
    return f"{VMMManager()._config.data_path}/{vm_id}/firecracker.socket"


def boot_args(spec):
    # MicroVM._boot_args, with the arguments this host's guest needs after it.
    common = (
        "console=ttyS0 reboot=k pci=off panic=1 "
        f"ip={spec['ip']}::{spec['gateway']}:255.255.255.0:"
        f"{spec['name']}:{spec['iface']}:on"
    )
    return f"{common} {spec.get('extra_boot_args', '')}".strip()


def create(spec):
    """spec: id, kernel, rootfs, mem_mib, vcpus, ip, gateway, name, iface;
    optional initrd, tap, vsock_uds, extra_boot_args."""
    vm_id = spec["id"]
    api = Api(socket_of(vm_id))
    # _run_firecracker(): the API answers GET / once the process is up.
    for _ in range(40):
        try:
            before = api.describe.get().json()
            break
        except APIError:
            time.sleep(0.25)
    else:
        raise SystemExit("GET / never answered")

    # A mistake is reported as the client expects: 400 with fault_message,
    # which it raises as APIError("API fault: ...").
    try:
        api.machine_config.put(vcpu_count=0, mem_size_mib=spec["mem_mib"])
        fault = None
    except APIError as e:
        fault = str(e)

    # MicroVM.create(): _configure_vmm_boot_source, _root_drive,
    # _resources, _network, _vsock, then InstanceStart.
    boot = {"kernel_image_path": spec["kernel"], "boot_args": boot_args(spec)}
    if spec.get("initrd"):
        boot["initrd_path"] = spec["initrd"]
    api.boot.put(**boot)
    api.drive.put(
        drive_id="rootfs",
        path_on_host=spec["rootfs"],
        is_root_device=spec.get("initrd") is None,
        is_read_only=False,
    )
    api.machine_config.put(vcpu_count=spec["vcpus"], mem_size_mib=spec["mem_mib"])
    if spec.get("tap"):
        api.network.put(iface_id=spec["iface"], host_dev_name=spec["tap"])
    if spec.get("vsock_uds"):
        api.vsock.put(guest_cid=3, uds_path=spec["vsock_uds"])
    api.actions.put(action_type="InstanceStart")
    version = api.version.get().json()
    api.close()

    manager = VMMManager()
    result(
        before=before,
        fault=fault,
        state=manager.get_vmm_state(vm_id),
        ip=manager.get_vmm_ip_addr(vm_id),
        config=manager.get_vmm_config(vm_id),
        version=version,
    )


def main():
    what, arg = sys.argv[1], sys.argv[2]
    if what == "create":
        create(json.loads(arg))
    elif what in ("pause", "resume"):
        manager = VMMManager()
        said = manager.update_vmm_state(arg, "Paused" if what == "pause" else "Resumed")
        result(said=said, state=manager.get_vmm_state(arg))
    elif what == "state":
        result(state=VMMManager().get_vmm_state(arg))
    else:
        raise SystemExit(f"unknown step {what}")


if __name__ == "__main__":
    main()

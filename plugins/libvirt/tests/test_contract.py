"""The libvirt backend passes vmmove's backend contract, on two real libvirt hosts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vmmove.testing.contract import BackendContract, ContractSetup

HOST_A = "vmmove-host-a"
HOST_B = "vmmove-host-b"
RUN, SLOW, OFF = "vt-c-run", "vt-c-slow", "vt-c-off"
GUESTS: dict[str, dict[str, int] | None] = {
    RUN: {"memory_mib": 256, "wss_mib": 16, "dirty_mib_s": 0},  # idle
    # Rewrites 128 MiB at 8 MiB/s, a quarter of the lan link: a migration that lasts long
    # enough to cancel (~8 s), and still converges under QEMU's defaults (each pass sends
    # what the previous one let the guest dirty, ~4x less each time). At 64 MiB/s, as on the
    # old unshaped loopback, it never converges on a 32 MiB/s link.
    SLOW: {"memory_mib": 256, "wss_mib": 128, "dirty_mib_s": 8},
    OFF: None,  # defined, never started
}


def _in_place(guests: Any, name: str, running: bool) -> bool:
    """Is ``name`` on host a only, persistent, running (or shut off) as the estate wants?"""
    found = guests.find(name)
    if len(found) != 1 or found[0][0] != 0:
        return False
    dom = found[0][1]
    state = dom.state()[0]
    want = guests.lv.VIR_DOMAIN_RUNNING if running else guests.lv.VIR_DOMAIN_SHUTOFF
    return bool(dom.isPersistent()) and state == want


def reset_estate(guests: Any) -> None:
    """The same estate for every test: put back only what the last test changed."""
    guests.remove_all(keep=lambda n: n in GUESTS)
    for name, spec in GUESTS.items():
        running = spec is not None
        if _in_place(guests, name, running):
            continue
        guests.create(
            name, start=running, wait_beats=2 if name == SLOW else 0, **(spec or {"wss_mib": 0})
        )


@pytest.fixture(scope="module", autouse=True)
def _contract_guests_go_afterwards(guests_session: Any) -> Iterator[None]:
    """The contract's guests live for this module only (the busy one takes a whole core)."""
    yield
    guests_session.remove_all()


def fail_cold_step(guests: Any, conn: Any, vm_id: str, step: str) -> None:
    """Make the next cold move of ``vm_id`` fail at ``step``. ``move``: a domain of the same
    name (another UUID) appears on the target just before the move, and libvirt refuses the
    definition (a real refusal). ``start``: the target accepts the power-on and the VM never
    comes up (as a host that cannot boot it would; the core's boot_timeout ends the wait)."""
    backend = conn.backend
    relocate, power_on = backend.relocate, backend.power_on
    name = conn.vm(vm_id).name

    def clashing_relocate(vm: Any, target: Any, spec: Any, *, request_id: str) -> Any:
        if vm.id == vm_id and target.id == HOST_B:
            backend.__dict__.pop("relocate", None)  # once
            guests.conns[1].defineXML(guests.xml(name, fresh_console=False))
        return relocate(vm, target, spec, request_id=request_id)

    def silent_power_on(vm: Any) -> None:
        if vm.id == vm_id and vm.host == HOST_B:
            backend.__dict__.pop("power_on", None)  # once
            return
        power_on(vm)

    if step == "move":
        object.__setattr__(backend, "relocate", clashing_relocate)
    else:
        object.__setattr__(backend, "power_on", silent_power_on)


class TestLibvirtContract(BackendContract):
    @pytest.fixture
    def contract_setup(
        self, guests: Any, connect: Any, cluster_uri: str, quick_cold: Any
    ) -> Iterator[ContractSetup]:
        import vmmove

        reset_estate(guests)
        # The test guest ignores ACPI: a cold move powers it off after the policy's
        # shutdown_timeout, 3 s here.
        conn = quick_cold(connect())
        yield ContractSetup(
            connection=conn,
            running_vm=RUN,
            target=HOST_B,
            stopped_vm=OFF,
            slow_vm=SLOW,
            timeout=180.0,
            # another client over the same records: a peer-to-peer migration goes on in
            # libvirtd without the client that started it
            reconnect=lambda store: vmmove.connect(cluster_uri, store=store),
            fail_cold_step=lambda vm, step: fail_cold_step(guests, conn, vm, step),
        )
        # Whatever the test did, the guests that ran kept their memory intact.
        for name in (RUN, SLOW):
            if not any(active for _, active in guests.where(name)):
                continue
            hb = guests.heartbeats(name)
            if hb.latest_seq:  # booted: it must keep beating (a rebooted guest counts anew)
                seen = hb.count
                beat = lambda n=name, c=seen: guests.heartbeats(n).count > c  # noqa: E731
                assert guests.wait_until(beat, 30), f"{name} stopped beating"
                hb = guests.heartbeats(name)
            assert hb.bad == 0, hb.bad_lines
            assert not hb.panic_lines, hb.panic_lines
            # A cold move (the fallback test) boots the guest again; a guest that panics is
            # destroyed (on_reboot=destroy), never rebooted, and its panic is in the console.
            assert hb.boots <= 2

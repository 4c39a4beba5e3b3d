"""Predicting a migration before it starts: one model for the caller, placement and the fleet.

:func:`predict` is the pre-copy cost model the placement weigher and the fleet planners use:
pass 1 sends the resident memory, each later pass what the guest dirtied meanwhile (at most
its working set), and a pass whose leftovers fit the downtime limit of that pass switches
over. :func:`predict_migration` walks a whole :class:`~vmmove.policy.Policy` over the same
passes: which steps fire and when, auto-converge's throttle, post-copy, the caller's caps,
and says what it assumed (:attr:`Prediction.basis`).

Inputs are what the inventory knows: the VM's dirty rate (a platform sample, libvirt's
dirty-rate calculation; the simulator's model), its working set and resident memory
(``extra``), what a compressed re-sent page cost its last migration (``extra["delta_ratio"]``),
and the link between the hosts (``extra["link_mib_s"]``, else 10 GbE).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vmmove.model import Figures, HostInfo, MiB, PowerState, VMInfo
from vmmove.policy import (
    QEMU_THROTTLE_INITIAL,
    Abort,
    AtIteration,
    AutoConverge,
    BudgetShare,
    ColdFallback,
    Compress,
    DirtyRateAbove,
    Policy,
    PostCopy,
    SetBandwidth,
    SetDowntime,
    Stalled,
    Step,
    adapt,
)

if TYPE_CHECKING:
    from vmmove.backend import Capabilities

__all__ = [
    "DEFAULT_LINK",
    "Cost",
    "Prediction",
    "delta_ratio",
    "downtime_schedule",
    "forecast",
    "link_of",
    "predict",
    "predict_migration",
    "resident",
    "sized_throttle",
    "usable",
    "working_set",
]

#: Outgoing link assumed for a host that does not say (``extra["link_mib_s"]``): 10 GbE.
DEFAULT_LINK = 1170.0 * MiB
#: QEMU's defaults: the downtime limit, and auto-converge's first throttle and its step.
QEMU_DOWNTIME_S = 0.3
AC_INITIAL, AC_INCREMENT, AC_MAX = QEMU_THROTTLE_INITIAL, 10, 99
#: The pause of a post-copy switch where the platform does not say: device state only.
POSTCOPY_PAUSE_S = 0.005
SWITCH_OVERHEAD_S = 0.02
#: Passes a policy walk tries before it calls a migration one that does not switch over.
POLICY_PASSES = 60


def link_of(host: HostInfo | None, default: float = DEFAULT_LINK) -> float:
    """A host's outgoing link in bytes/s, from ``extra["link_mib_s"]``."""
    if host is None:
        return default
    try:
        value = float(host.extra.get("link_mib_s", ""))
    except ValueError:
        return default
    return value * MiB if value > 0 else default


def working_set(vm: VMInfo) -> int:
    """Memory the guest keeps rewriting (``extra["working_set_mib"]``), else all of it."""
    try:
        return min(int(float(vm.extra["working_set_mib"]) * MiB), vm.memory)
    except (KeyError, ValueError):
        return vm.memory


def _window(vm: VMInfo) -> float:
    """The longest pass the working set caps (``extra["working_set_window_s"]``): a figure
    read as what the guest dirtied in that time (libvirt's) says nothing of longer passes."""
    try:
        window = float(vm.extra["working_set_window_s"])
    except (KeyError, ValueError):
        return math.inf
    return window if window > 0 else math.inf


def _dirtied(ws: float, window: float, memory: float, dirty: float, t: float) -> float:
    """What a guest dirtying ``dirty`` bytes/s leaves to send after a pass of ``t`` s."""
    return min(ws if t <= window else memory, dirty * t)


def resident(vm: VMInfo) -> int:
    """Memory pass 1 sends (``extra["resident_mib"]``), else all of it."""
    try:
        return min(int(float(vm.extra["resident_mib"]) * MiB), vm.memory)
    except (KeyError, ValueError):
        return vm.memory  # zero pages unknown: every page is sent once


def delta_ratio(vm: VMInfo) -> float | None:
    """What a compressed re-sent page cost the VM's last migration, as a share of a page
    (``extra["delta_ratio"]``, the platform's figure); ``None`` if unknown."""
    try:
        ratio = float(vm.extra["delta_ratio"])
    except (KeyError, ValueError):
        return None
    return ratio if 0 < ratio <= 1 else None


def downtime_schedule(
    policy: Policy, max_downtime: int | None = None
) -> tuple[tuple[int, float], ...]:
    """(from pass, seconds) as ``policy`` raises the downtime limit pass by pass (only the
    steps triggered by the pass count; emergency steps are not planned on)."""
    cap_ms = max_downtime if max_downtime else policy.pause_cap_ms
    cap = cap_ms / 1000 if cap_ms else None
    out = [(1, min(QEMU_DOWNTIME_S, cap) if cap else QEMU_DOWNTIME_S)]
    for step in policy.steps:
        if isinstance(step.trigger, AtIteration) and isinstance(step.action, SetDowntime):
            s = step.action.ms / 1000
            out.append((step.trigger.n, min(s, cap) if cap else s))
    return tuple(sorted(out))


def sized_throttle(dirty: float, rate: float) -> tuple[int, int]:
    """Auto-converge's first throttle and its step (percent) for a guest dirtying ``dirty``
    bytes/s over a transfer of ``rate`` bytes/s: at once the throttle that leaves the guest a
    quarter of the rate (a pass then shrinks the rest fourfold), instead of QEMU's creep from
    20 % by 10 % a pass; the step is larger when the first throttle is already high."""
    if dirty <= 0 or rate <= 0:
        return AC_INITIAL, AC_INCREMENT
    initial = math.ceil(100 * (1 - 0.25 * rate / dirty))
    initial = max(AC_INITIAL, min(initial, AC_MAX))
    increment = max(AC_INCREMENT, min((AC_MAX - initial) // 2, 30))
    return initial, increment


# ---- the pre-copy cost model -----------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Cost:
    """A predicted migration at a given bandwidth share (see :func:`predict`)."""

    seconds: float  # transfer and pause, without the platform's fixed set-up time
    data: int  # bytes sent
    passes: int
    converges: bool  # pre-copy reaches a pause within the downtime limit
    rate: float  # bytes/s assumed
    need: float  # bytes/s below which pre-copy converges slowly or not at all

    def __str__(self) -> str:
        state = "" if self.converges else ", does not converge"
        return (
            f"~{self.seconds:.0f} s, {self.data / (1 << 30):.1f} GiB at "
            f"{self.rate / MiB:.0f} MiB/s{state}"
        )


def predict(
    vm: VMInfo,
    rate: float,
    *,
    downtime: Iterable[tuple[int, float]] = ((1, 0.3), (2, 0.5), (4, 1.0)),
    max_passes: int = 30,
) -> Cost:
    """Predict a live pre-copy migration of ``vm`` at ``rate`` bytes/s.

    ``downtime`` lists (from pass, seconds) as the policy raises the limit. A migration
    whose passes stop shrinking does not converge. A stopped VM costs its memory once.
    """
    running = vm.power is PowerState.RUNNING
    dirty = float(vm.dirty_rate or 0.0) if running else 0.0
    return _predict(
        dirty,
        working_set(vm),
        resident(vm),
        max(rate, 1.0),
        limits=tuple(sorted(downtime)),
        max_passes=max_passes,
        window=_window(vm),
        memory=vm.memory,
    )


@functools.lru_cache(maxsize=16384)
def _predict(
    dirty: float,
    ws: int,
    resident: int,
    rate: float,
    *,
    limits: tuple[tuple[int, float], ...],
    max_passes: int,
    window: float,
    memory: int,
) -> Cost:
    d_max = max((s for _, s in limits), default=QEMU_DOWNTIME_S)
    need = 0.0 if dirty <= 0 else min(dirty / 0.8, ws / d_max)
    size = float(resident)
    if dirty <= 0:
        return Cost(
            seconds=size / rate, data=resident, passes=1, converges=True, rate=rate, need=need
        )
    seconds = data = 0.0
    n = 0
    for n in range(1, max_passes + 1):
        t = size / rate
        seconds += t
        data += size
        pending = _dirtied(ws, window, memory, dirty, t)
        limit = max((s for i, s in limits if i <= n), default=QEMU_DOWNTIME_S)
        if pending / rate <= limit:
            seconds += pending / rate
            return Cost(
                seconds=seconds,
                data=int(data + pending),
                passes=n,
                converges=True,
                rate=rate,
                need=need,
            )
        if n > 1 and pending >= size * 0.999:
            break  # passes stopped shrinking: it stalls
        size = pending
    return Cost(seconds=math.inf, data=int(data), passes=n, converges=False, rate=rate, need=need)


# ---- a whole policy over the same passes -------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """What a live migration is predicted to do, before it starts."""

    vm: str
    source: str
    target: str
    policy: str
    rate: float  # bytes/s of the link assumed
    dirty_rate: float  # bytes/s the guest was measured (or assumed) to dirty
    converges: bool  # ends within the policy's limits (post-copy counts)
    total_time: float | None  # seconds of transfer and pause; None: it does not end
    downtime_ms: float | None  # the switch-over pause
    data: int  # bytes sent
    passes: int
    postcopy: bool  # the policy switches it to post-copy
    steps: tuple[str, ...]  # the policy steps predicted to fire, in order
    basis: tuple[str, ...]  # what the prediction assumed, to judge it by

    @property
    def bound(self) -> float:
        """Seconds the memory that must cross takes at the link rate alone."""
        return self.data / self.rate if self.rate > 0 else math.inf


def predict_migration(
    vm: VMInfo,
    source: HostInfo | None,
    target: HostInfo,
    policy: Policy,
    *,
    bandwidth: int | None = None,
    max_downtime: int | None = None,
    max_passes: int = POLICY_PASSES,
    link: float | None = None,
    allow_postcopy: bool | None = None,
    max_slowdown: int | None = None,
    setup_s: float = 0.0,
    switchover_s: float = SWITCH_OVERHEAD_S,
    postcopy_switch_s: float = POSTCOPY_PAUSE_S,
    capabilities: Capabilities | None = None,
) -> Prediction:
    """Walk ``policy`` over the predicted passes of a live migration of ``vm`` to ``target``.

    The link is the slower of the two hosts' (``link``, bytes/s, for a host that does not say:
    the caller's declaration, else 10 GbE; ``bandwidth`` MiB/s caps it). Triggers map onto
    passes: ``AtIteration`` from its pass; ``DirtyRateAbove`` once the guest (throttled, if
    auto-converge runs) dirties that share of the rate; ``Stalled`` once passes stop
    shrinking for its seconds; ``BudgetShare`` at that share of the completion budget.
    ``SetDowntime`` raises the limit (never above ``max_downtime``), ``AutoConverge``
    throttles from the next pass (QEMU's 20 % then +10 % a pass, or the step's own),
    ``PostCopy`` switches at the end of the pass, ``Abort``/``ColdFallback`` end the live
    attempt, as does a throttle above ``max_slowdown`` (percent; the first throttle is
    capped at it). ``setup_s``: the platform's fixed cost of a migration (``Backend.setup_s``),
    added to the total time; ``switchover_s``: the fixed part of its pre-copy pause
    (``Backend.switchover_s``), added to the last copy; ``postcopy_switch_s``: the pause of
    its switch to post-copy (``Backend.postcopy_switch_s``). ``capabilities``: the platform's; the
    engine skips a step whose action it lacks, and so does the walk (without them, the
    platform is assumed to have every one).
    """
    # As the engine runs it: adapted for this caller and platform, less what it cannot do.
    policy, lacking = usable(
        policy, capabilities, allow_postcopy=allow_postcopy, max_slowdown=max_slowdown
    )
    rate = _rate(source, target, link, bandwidth)
    declared = "as declared (link_mib_s)" if link else "10 GbE"
    basis = [f"link {rate / MiB:.0f} MiB/s (the slower host's link_mib_s, else {declared})"]
    if bandwidth:
        basis.append(f"capped at {bandwidth} MiB/s by the caller")
    running = vm.power is PowerState.RUNNING
    if running and vm.dirty_rate is None:
        basis.append("dirty rate not measured: assumed 0 (the prediction is a lower bound)")
    elif running:
        basis.append(
            f"dirty rate {float(vm.dirty_rate or 0) / MiB:.1f} MiB/s (the platform's sample)"
        )
    if "working_set_mib" in vm.extra:
        window = _window(vm)
        within = "" if math.isinf(window) else f", dirtied in {window:g} s: a cap on passes as long"
        basis.append(f"working set {working_set(vm) / MiB:.0f} MiB (the platform's figure{within})")
    elif running and vm.dirty_rate:
        basis.append("working set not known: every page the guest may rewrite (an upper bound)")
    if "resident_mib" in vm.extra:
        basis.append(f"{resident(vm) / MiB:.0f} MiB not zero (the platform's figure)")
    else:
        basis.append("every page assumed not zero: the platform did not say (a lookup of a VM "
                     "that migrated before may)")  # fmt: skip
    if lacking:
        basis.append(
            "skipped, as the engine would, for want of the platform's capability: "
            + "; ".join(f"{s} ({s.action.capability})" for s in lacking)
        )
    if setup_s:
        basis.append(f"{setup_s:g} s of the platform's fixed set-up (Backend.setup_s)")
    basis.append(f"{switchover_s * 1000:g} ms of fixed pause at switch-over (Backend.switchover_s)")
    w = _walk(
        vm,
        policy,
        rate,
        max_downtime=max_downtime,
        max_passes=max_passes,
        allow_postcopy=allow_postcopy,
        max_slowdown=max_slowdown,
        setup_s=setup_s,
        switchover_s=switchover_s,
        postcopy_switch_s=postcopy_switch_s,
    )
    if w.postcopy:
        basis.append(
            f"{postcopy_switch_s * 1000:g} ms of pause at the switch to post-copy "
            "(Backend.postcopy_switch_s)"
        )
    if w.ended:
        basis.append(w.ended)
    if any(isinstance(s.action, Compress) for s in policy.steps):
        ratio = delta_ratio(vm)
        if ratio is None:
            basis.append(
                "compression not counted: what it saves depends on how little of each page "
                "the guest changes, and no earlier migration of it says (an upper bound, where "
                "the platform compresses)"
            )
        else:
            basis.append(
                f"a compressed re-sent page costs {ratio:.0%} of a page (the guest's last "
                "migration), from the third pass on (compression is armed with the start; "
                "the second pass fills the cache)"
            )
    return Prediction(
        vm=vm.id,
        source=source.id if source else vm.host,
        target=target.id,
        policy=policy.name,
        rate=w.rate,
        dirty_rate=w.dirty,
        converges=w.converges,
        total_time=w.elapsed if w.converges else None,
        downtime_ms=w.pause * 1000 if w.pause is not None else None,
        data=int(w.data),
        passes=w.passes,
        postcopy=w.postcopy,
        steps=tuple(str(s) for s in w.fired),
        basis=tuple(basis),
    )


def forecast(
    vm: VMInfo,
    source: HostInfo | None,
    target: HostInfo,
    policy: Policy,
    *,
    bandwidth: int | None = None,
    max_downtime: int | None = None,
    link: float | None = None,
    allow_postcopy: bool | None = None,
    max_slowdown: int | None = None,
    setup_s: float = 0.0,
    switchover_s: float = SWITCH_OVERHEAD_S,
    postcopy_switch_s: float = POSTCOPY_PAUSE_S,
    capabilities: Capabilities | None = None,
) -> Figures:
    """:func:`predict_migration`'s figures alone, for an already adapted ``policy``: what the
    engine records on every live migration, so it builds none of the explanation."""
    if capabilities is not None:
        policy, _ = _without(policy, capabilities)
    rate = _rate(source, target, link, bandwidth)
    w = _walk(
        vm,
        policy,
        rate,
        max_downtime=max_downtime,
        max_passes=POLICY_PASSES,
        allow_postcopy=allow_postcopy,
        max_slowdown=max_slowdown,
        setup_s=setup_s,
        switchover_s=switchover_s,
        postcopy_switch_s=postcopy_switch_s,
    )
    return Figures(
        total_time=w.elapsed if w.converges else None,
        downtime_ms=w.pause * 1000 if w.converges and w.pause is not None else None,
        data_sent=int(w.data),
        iterations=w.passes,
    )


def usable(
    policy: Policy,
    capabilities: Capabilities | None,
    *,
    allow_postcopy: bool | None,
    max_slowdown: int | None = None,
) -> tuple[Policy, tuple[Step, ...]]:
    """``policy`` as the engine runs it on a platform with ``capabilities`` (``None``: every
    one): adapted for the caller, and without the steps the engine would skip for want of a
    capability, which come second."""
    postcopy = capabilities is None or capabilities.has("postcopy")
    adapted = adapt(
        policy, allow_postcopy=allow_postcopy, postcopy=postcopy, max_slowdown=max_slowdown
    )
    if capabilities is None:
        return adapted, ()
    return _without(adapted, capabilities)


def _without(policy: Policy, capabilities: Capabilities) -> tuple[Policy, tuple[Step, ...]]:
    lacking = tuple(s for s in policy.steps if not capabilities.has(s.action.capability))
    if not lacking:
        return policy, ()
    kept = tuple(s for s in policy.steps if s not in lacking)
    return replace(policy, steps=kept), lacking


def _rate(
    source: HostInfo | None, target: HostInfo, link: float | None, bandwidth: int | None
) -> float:
    default = link if link else DEFAULT_LINK
    rate = min(link_of(source, default), link_of(target, default))
    return min(rate, bandwidth * MiB) if bandwidth else rate


@dataclass(slots=True)
class _Walk:
    rate: float
    dirty: float
    fired: list[Step]
    converges: bool = False
    elapsed: float = 0.0
    pause: float | None = None
    data: float = 0.0
    passes: int = 0
    postcopy: bool = False
    ended: str = ""  # why the live attempt does not end, when it does not


def _walk(
    vm: VMInfo,
    policy: Policy,
    rate: float,
    *,
    max_downtime: int | None,
    max_passes: int,
    allow_postcopy: bool | None,
    max_slowdown: int | None = None,
    setup_s: float,
    switchover_s: float,
    postcopy_switch_s: float,
) -> _Walk:
    running = vm.power is PowerState.RUNNING
    dirty = float(vm.dirty_rate or 0.0) if running else 0.0
    ws, size, window = working_set(vm), float(resident(vm)), _window(vm)
    cap_ms = max_downtime if max_downtime else policy.platform_cap_ms(switchover_s)
    cap = cap_ms / 1000 if cap_ms else None
    budget = policy.budget(vm.memory)
    limit = min(QEMU_DOWNTIME_S, cap) if cap else QEMU_DOWNTIME_S
    w = _Walk(rate=rate, dirty=dirty, fired=[], elapsed=setup_s)
    # Compression is armed with the start where a policy may compress (a start-time
    # capability), whichever pass its step fires in. XBZRLE sends a page whole until its last
    # copy is in the cache: the first pass never encodes, the second fills the cache, the
    # ones after it send deltas.
    ratio = delta_ratio(vm) if any(isinstance(s.action, Compress) for s in policy.steps) else None
    compressed_from = 3
    throttle = 0.0
    throttle_step = 0.0
    stalled_since: float | None = None
    smallest = math.inf

    def fire(step: Step) -> None:
        nonlocal limit, throttle_step
        w.fired.append(step)
        act = step.action
        if isinstance(act, SetDowntime):
            limit = max(limit, min(act.ms / 1000, cap) if cap else act.ms / 1000)
        elif isinstance(act, SetBandwidth):
            w.rate = min(w.rate, act.mib_s * MiB)
        elif isinstance(act, AutoConverge) and throttle_step == 0:
            throttle_step = -1.0  # starts with the next pass

    def ends(pause: float, sent: float, *, postcopy: bool = False) -> _Walk:
        w.elapsed += pause
        w.data += sent
        w.converges, w.pause, w.postcopy = True, pause, postcopy
        return w

    for n in range(1, max_passes + 1):
        w.passes = n
        if throttle_step < 0:  # auto-converge armed last pass: QEMU's first throttle now
            ac = next(s.action for s in w.fired if isinstance(s.action, AutoConverge))
            assert isinstance(ac, AutoConverge)
            if ac.sized:
                first, more = sized_throttle(dirty, w.rate)
                first = min(first, max_slowdown or first)
            else:
                first, more = ac.initial or AC_INITIAL, ac.increment or AC_INCREMENT
            throttle, throttle_step = first / 100, more / 100
        elif throttle_step > 0:
            throttle = min(throttle + throttle_step, AC_MAX / 100)
        if max_slowdown is not None and throttle * 100 > max_slowdown + 1e-9:
            # The engine ends the attempt once the platform throttles past the limit.
            fallback = next((s for s in policy.steps if isinstance(s.action, ColdFallback)), None)
            why = f"the throttle would pass max_slowdown {max_slowdown} %"
            if fallback is not None and fallback not in w.fired:
                w.fired.append(fallback)
                w.ended = f"{why}: the live attempt ends at {fallback}"
            else:
                w.ended = f"{why}: the migration fails, the VM stays on its source"
            return w
        guest = dirty * (1 - throttle)
        # The engine sees pass n begin (and the rate measured over pass n-1): steps fire
        # now, and a platform tests for switch-over at once when its limits change.
        stalled = None if stalled_since is None else w.elapsed - stalled_since
        now_fired = [
            step
            for step in policy.steps
            if step not in w.fired
            and _holds(
                step,
                n=n,
                guest=guest,
                rate=w.rate,
                elapsed=w.elapsed,
                budget=budget,
                stalled=stalled,
            )
        ]
        for step in now_fired:
            fire(step)
            if isinstance(step.action, (Abort, ColdFallback)):
                w.ended = f"the live attempt ends at {step}"
                return w
        rate = w.rate
        if allow_postcopy is not False and any(isinstance(s.action, PostCopy) for s in now_fired):
            # The rest, pulled over the link after a pause for device state only.
            w.elapsed += size / rate
            return ends(postcopy_switch_s, size, postcopy=True)
        # What this pass's pages and the next's cost on the wire, compressed or whole.
        here = ratio if ratio is not None and n >= compressed_from else 1.0
        after = ratio if ratio is not None and n + 1 >= compressed_from else 1.0
        if now_fired and n > 1 and size * here / rate <= limit:
            return ends(size * here / rate + switchover_s, size * here)
        t = size * here / rate
        w.elapsed += t
        w.data += size * here
        pending = _dirtied(ws, window, vm.memory, guest, t)
        if pending * after / rate <= limit:
            return ends(pending * after / rate + switchover_s, pending * after)
        if pending < smallest * 0.999:
            smallest, stalled_since = pending, None
        elif stalled_since is None:
            stalled_since = w.elapsed - t
        if w.elapsed > budget:
            w.ended = "the completion budget runs out"
            return w
        size = pending
    w.ended = f"no switch-over within {max_passes} passes"
    return w


def _holds(
    step: Step,
    *,
    n: int,
    guest: float,
    rate: float,
    elapsed: float,
    budget: float,
    stalled: float | None,
) -> bool:
    trig = step.trigger
    if isinstance(trig, AtIteration):
        return n >= trig.n
    if isinstance(trig, DirtyRateAbove):
        return n >= trig.from_iteration and guest >= trig.share * rate
    if isinstance(trig, Stalled):
        return stalled is not None and stalled >= trig.seconds
    if isinstance(trig, BudgetShare):
        return elapsed >= trig.share * budget
    return False

"""Convergence policy as data: a schedule of (trigger, action) steps.

The engine evaluates the schedule on every poll during transfer; each step fires once,
in order of the schedule, as soon as its trigger holds (as oVirt VDSM does). A step whose
action the backend does not declare is *skipped* and the record says so.

Budgets scale with memory, as Nova and KubeVirt do: a VM of ``m`` GiB gets
``completion_budget_per_gib * max(m, 2)`` seconds before the engine aborts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from vmmove.errors import InvalidInput

__all__ = [
    "PRESETS",
    "Abort",
    "Action",
    "AtIteration",
    "AutoConverge",
    "BudgetShare",
    "ColdFallback",
    "Compress",
    "DirtyRateAbove",
    "ForceConvergence",
    "Policy",
    "PostCopy",
    "SetBandwidth",
    "SetDowntime",
    "Stalled",
    "Step",
    "Trigger",
    "adapt",
]


# ---- triggers ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AtIteration:
    """Holds from the ``n``-th pre-copy pass on (the first pass is 1)."""

    n: int

    def __str__(self) -> str:
        return f"iteration>={self.n}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Stalled:
    """Holds once the remaining data has not reached a new low for ``seconds``."""

    seconds: float

    def __str__(self) -> str:
        return f"stalled>={self.seconds:g}s"


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetShare:
    """Holds once ``share`` (0..1] of the completion budget has elapsed."""

    share: float

    def __str__(self) -> str:
        return f"budget>={self.share:.0%}"


@dataclass(frozen=True, kw_only=True, slots=True)
class DirtyRateAbove:
    """Holds from pass ``from_iteration`` on while the guest dirties memory at ``share`` or more
    of the transfer rate: pre-copy alone will not converge."""

    share: float
    from_iteration: int = 2

    def __str__(self) -> str:
        return f"dirty-rate>={self.share:.0%}-of-transfer"


Trigger = AtIteration | Stalled | BudgetShare | DirtyRateAbove


# ---- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SetDowntime:
    """Allow a longer pause at switchover (ms)."""

    ms: int
    capability = "max_downtime"

    def __str__(self) -> str:
        return f"downtime={self.ms}ms"


@dataclass(frozen=True, kw_only=True, slots=True)
class SetBandwidth:
    """Change the transfer rate limit (MiB/s)."""

    mib_s: int
    capability = "bandwidth"

    def __str__(self) -> str:
        return f"bandwidth={self.mib_s}MiB/s"


@dataclass(frozen=True, kw_only=True, slots=True)
class AutoConverge:
    """Throttle the guest's vCPUs so it dirties memory slower than it is sent. ``initial``
    and ``increment`` (percent) set the first throttle and its step per pass where the
    platform takes them (libvirt's ``auto_converge.initial``/``.increment``; QEMU's own
    default is 20 then +10); ``None`` leaves the platform's. A ``sized`` step's ``initial``
    is where a platform that takes the throttle only with the call starts."""

    initial: int | None = None
    increment: int | None = None
    #: the engine chooses ``initial`` and ``increment`` from the measured dirty and transfer
    #: rates (:func:`vmmove.prediction.sized_throttle`) instead of creeping up from 20 %
    sized: bool = False
    capability = "auto_converge"

    def __str__(self) -> str:
        if self.sized:
            return "auto-converge(sized)"
        if self.initial is None and self.increment is None:
            return "auto-converge"
        return f"auto-converge({self.initial or 20}%+{self.increment or 10}%)"


@dataclass(frozen=True, kw_only=True, slots=True)
class Compress:
    """Send re-dirtied pages as deltas against the copy sent before (QEMU's XBZRLE): a guest
    that changes a few bytes of each page it writes costs the link a fraction of a page per
    page; one that rewrites whole pages gains nothing. Some platforms arm it only when the
    job starts (libvirt), and it works from the third pass (the second fills its cache)."""

    capability = "compression"

    def __str__(self) -> str:
        return "compress"


@dataclass(frozen=True, kw_only=True, slots=True)
class PostCopy:
    """Start the VM on the target now and pull the rest on demand. Fast, but a failure
    after this point can lose the VM."""

    capability = "postcopy"

    def __str__(self) -> str:
        return "post-copy"


@dataclass(frozen=True, kw_only=True, slots=True)
class Abort:
    """Give up; the VM keeps running on its source."""

    capability = "cancel"

    def __str__(self) -> str:
        return "abort"


@dataclass(frozen=True, kw_only=True, slots=True)
class ColdFallback:
    """Abort the live migration and move the VM cold (stop, move, start). Opt-in only."""

    capability = "cold"

    def __str__(self) -> str:
        return "cold-fallback"


@dataclass(frozen=True, kw_only=True, slots=True)
class ForceConvergence:
    """Make a migration converge that pre-copy alone will not finish: post-copy where the
    caller allows it (``allow_postcopy=True``) and the platform can, otherwise auto-converge
    with its first throttle sized from the measured rates. Chosen once, when the migration
    is submitted (:func:`adapt`): the record names the action taken."""

    capability = "auto_converge"

    def __str__(self) -> str:
        return "force-convergence"


Action = (
    SetDowntime
    | SetBandwidth
    | AutoConverge
    | Compress
    | PostCopy
    | Abort
    | ColdFallback
    | ForceConvergence
)

#: Actions that must be enabled when the job starts on some platforms (libvirt's flags).
START_TIME_CAPABILITIES = frozenset({"auto_converge", "compression", "postcopy"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    trigger: Trigger
    action: Action

    def __str__(self) -> str:
        return f"{self.trigger} -> {self.action}"


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A named convergence schedule plus its time limits."""

    name: str
    steps: tuple[Step, ...] = ()
    completion_budget_per_gib: float = 150.0
    stall_timeout: float = 150.0
    #: cold moves: how long a guest may take to shut down before it is powered off, and to
    #: start on the target before the record says it did not
    shutdown_timeout: float = 120.0
    boot_timeout: float = 300.0
    description: str = ""
    #: the longest switch-over pause (ms) the guest may feel from the steps unless the
    #: caller's ``max_downtime`` says otherwise (``None``: the steps' own); presets keep to
    #: 1 s. The platform's limit bounds only its last copy, so the steps give it the cap less
    #: the platform's fixed part of the pause (:meth:`platform_cap_ms`).
    pause_cap_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInput("a policy needs a name")
        limits = (
            self.completion_budget_per_gib,
            self.stall_timeout,
            self.shutdown_timeout,
            self.boot_timeout,
        )
        if not all(limit > 0 for limit in limits):
            raise InvalidInput("policy budgets and timeouts must be positive")
        if self.pause_cap_ms is not None and self.pause_cap_ms <= 0:
            raise InvalidInput("pause_cap_ms must be positive")
        for step in self.steps:
            if not isinstance(step, Step):
                raise InvalidInput(f"policy steps must be Step, not {type(step).__name__}")
            trig = step.trigger
            if isinstance(trig, AtIteration) and trig.n < 1:
                raise InvalidInput("AtIteration.n starts at 1")
            if isinstance(trig, BudgetShare) and not 0 < trig.share <= 1:
                raise InvalidInput("BudgetShare.share must lie in (0, 1]")
            if isinstance(trig, Stalled) and trig.seconds <= 0:
                raise InvalidInput("Stalled.seconds must be positive")
            if isinstance(trig, DirtyRateAbove) and (trig.share <= 0 or trig.from_iteration < 1):
                raise InvalidInput("DirtyRateAbove needs a positive share and from_iteration >= 1")
            act = step.action
            if isinstance(act, SetDowntime) and act.ms <= 0:
                raise InvalidInput("SetDowntime.ms must be positive")
            if isinstance(act, SetBandwidth) and act.mib_s <= 0:
                raise InvalidInput("SetBandwidth.mib_s must be positive")
            if isinstance(act, AutoConverge) and not all(
                v is None or 1 <= v <= 99 for v in (act.initial, act.increment)
            ):
                raise InvalidInput("AutoConverge.initial and .increment are percent, 1..99")

    @property
    def needs(self) -> frozenset[str]:
        """Capabilities this schedule may use."""
        return frozenset(step.action.capability for step in self.steps)

    def platform_cap_ms(self, switchover_s: float) -> int | None:
        """The highest downtime limit the steps may give a platform whose switch-over pauses
        the guest ``switchover_s`` beyond its last copy (``Backend.switchover_s``), so that
        the whole pause keeps to :attr:`pause_cap_ms`."""
        if self.pause_cap_ms is None:
            return None
        return max(self.pause_cap_ms - round(switchover_s * 1000), 1)

    def budget(self, memory_bytes: int) -> float:
        gib = max(memory_bytes / (1 << 30), 2.0)
        return self.completion_budget_per_gib * gib


def adapt(
    policy: Policy,
    *,
    allow_postcopy: bool | None,
    postcopy: bool,
    max_slowdown: int | None = None,
) -> Policy:
    """``policy`` as it runs for this caller on this platform: each
    :class:`ForceConvergence` becomes :class:`PostCopy` when the caller allowed post-copy
    and the platform can (``postcopy``), else sized :class:`AutoConverge`. Explicit
    ``PostCopy`` steps stay; with ``allow_postcopy=False`` the engine skips them. With
    ``max_slowdown`` (percent) every :class:`AutoConverge` starts no higher than it: some
    platforms take the first throttle only when the job starts (libvirt)."""
    # Keyed by identity: hashing a policy's steps on every migration cost more than the
    # adaptation itself. The entry keeps the policy alive, so its id cannot be reused.
    key = (id(policy), allow_postcopy, postcopy, max_slowdown)
    hit = _adapted.get(key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    adapted = _adapt(policy, allow_postcopy, postcopy, max_slowdown)
    if not isinstance(policy.steps, tuple):  # a list of steps may yet change
        return adapted
    if len(_adapted) >= 256:
        _adapted.clear()
    _adapted[key] = (policy, adapted)
    return adapted


def _adapt(
    policy: Policy, allow_postcopy: bool | None, postcopy: bool, max_slowdown: int | None
) -> Policy:
    def adapted(action: Action) -> Action:
        if isinstance(action, ForceConvergence):
            if allow_postcopy and postcopy:
                return PostCopy()
            action = AutoConverge(sized=True)
        if isinstance(action, AutoConverge) and max_slowdown is not None:
            # Where the platform starts throttling (libvirt takes it only with the call); a
            # sized step's own choice is capped by the engine, from the spec.
            first = action.initial or QEMU_THROTTLE_INITIAL
            return replace(action, initial=min(first, max_slowdown))
        return action

    actions = [adapted(s.action) for s in policy.steps]
    if all(a is s.action for a, s in zip(actions, policy.steps, strict=True)):
        return policy
    steps = tuple(
        Step(trigger=s.trigger, action=a) for s, a in zip(policy.steps, actions, strict=True)
    )
    return replace(policy, steps=steps)


#: QEMU's first auto-converge throttle (percent) where nobody sets one
QEMU_THROTTLE_INITIAL = 20

# Every migration adapts one of a few policies: a new Policy each time cost ~20 us.
_adapted: dict[tuple[int, bool | None, bool, int | None], tuple[Policy, Policy]] = {}


def _steps(*pairs: tuple[Trigger, Action]) -> tuple[Step, ...]:
    return tuple(Step(trigger=t, action=a) for t, a in pairs)


def _presets() -> dict[str, Policy]:
    # No preset lets the guest pause longer than 1 s on its own (pause_cap_ms): on a real
    # link the stop-and-copy pays the link like every other byte, so a 5 s limit is a 5 s
    # freeze. Beyond that a preset switches to post-copy (balanced: only where the caller
    # allows it) or throttles the guest (auto-converge, its first throttle sized from the
    # measured rates); the caller's max_downtime can allow a longer pause, and then
    # balanced's emergency step uses it.
    balanced = _steps(
        (AtIteration(n=2), SetDowntime(ms=500)),
        (AtIteration(n=4), SetDowntime(ms=1_000)),
        (DirtyRateAbove(share=0.8), Compress()),
        (DirtyRateAbove(share=0.8), ForceConvergence()),
        (DirtyRateAbove(share=0.8, from_iteration=3), SetDowntime(ms=5_000)),
        (Stalled(seconds=30), AutoConverge()),
    )
    capped = 1_000
    return {
        p.name: p
        for p in (
            Policy(
                name="none",
                description="the hypervisor's own defaults; abort when the budget runs out",
            ),
            Policy(
                name="safe",
                steps=_steps(
                    (AtIteration(n=3), SetDowntime(ms=500)),
                    (AtIteration(n=5), SetDowntime(ms=1_000)),
                ),
                pause_cap_ms=capped,
                description="small downtime steps, never post-copy, abort at budget",
            ),
            Policy(
                name="balanced",
                steps=balanced,
                pause_cap_ms=capped,
                description="downtime steps to 1 s; if pre-copy cannot converge, post-copy "
                "where the caller allows it, else auto-converge sized from the measured rates",
            ),
            Policy(
                name="converge",
                steps=_steps(
                    (AtIteration(n=2), SetDowntime(ms=500)),
                    (AtIteration(n=3), SetDowntime(ms=1_000)),
                    (AtIteration(n=4), PostCopy()),
                    (Stalled(seconds=20), PostCopy()),
                ),
                pause_cap_ms=capped,
                description="downtime steps, then post-copy: always converges",
            ),
            Policy(
                name="minimal-downtime",
                steps=_steps((AtIteration(n=2), PostCopy())),
                pause_cap_ms=capped,
                description="post-copy after the first pass: the shortest pause",
            ),
            Policy(
                name="cold-fallback",
                steps=(*balanced, Step(trigger=BudgetShare(share=0.8), action=ColdFallback())),
                pause_cap_ms=capped,
                description="balanced, then stop-move-start if it still will not converge",
            ),
        )
    }


PRESETS: Mapping[str, Policy] = _presets()


def resolve(policy: str | Policy, extra: Iterable[Policy] = ()) -> Policy:
    """Turn a preset name (built-in or from a plugin) into a :class:`Policy`."""
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str):
        raise InvalidInput(f"a policy is a preset name or a Policy, not {type(policy).__name__}")
    known = {**PRESETS, **{p.name: p for p in extra}}
    try:
        return known[policy]
    except KeyError:
        names = ", ".join(sorted(known))
        raise InvalidInput(f"unknown policy {policy!r}; known: {names}") from None

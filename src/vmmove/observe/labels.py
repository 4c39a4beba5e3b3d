"""The vocabulary metrics and traces share, without importing either library."""

from __future__ import annotations

__all__ = ["ACTIONS", "action_of"]

#: The actions policy steps take (``vmmove.policy``), as their ``str()`` starts; a step the
#: platform decides, or one from a plugin's own action, is ``other``.
ACTIONS = (
    "downtime",
    "bandwidth",
    "auto-converge",
    "compress",
    "post-copy",
    "abort",
    "cold-fallback",
)


def action_of(step: str) -> str:
    """The action of a recorded step (``"iteration>=2 -> downtime=500ms"``: downtime)."""
    _, arrow, action = step.partition(" -> ")
    if not arrow:
        return "other"  # a step the platform decides is described, not scheduled
    # "auto-converge(sized)", "auto-converge(30%+10%)": the action, not its settings
    name = action.split("=", 1)[0].split("(", 1)[0].strip()
    return name if name in ACTIONS else "other"

"""What ``kubevirt://`` accepts, declared as data: the core parses keyword arguments, URI
query and config file against it (and refuses anything else, the simulator's ``clock`` and
``inventory`` too), and docs/backends/kubevirt.md's options table is written from it.
Importable without ``kubernetes`` (for ``vmmove backends`` and the CLI)."""

from __future__ import annotations

from vmmove.options import Option

__all__ = ["OPTIONS"]

OPTIONS: tuple[Option, ...] = (
    Option(
        name="kubeconfig",
        kind="path",
        doc="path of the kubeconfig (default: `$KUBECONFIG`, else `~/.kube/config`)",
    ),
    Option(
        name="in_cluster",
        kind="bool",
        doc="`true`: use the pod's service account even if a kubeconfig exists; `false`: never "
        "(default: automatic, the service account only when there is no kubeconfig)",
    ),
    Option(
        name="token",
        kind="secret",
        in_uri=False,
        doc="a bearer token sent instead of the kubeconfig's credentials; the CLI's "
        "`$VMMOVE_PASSWORD` and `--ask-password` supply it",
    ),
    Option(
        name="migration_policy",
        kind="bool",
        default=True,
        doc="`false`: never write `MigrationPolicy` objects; the cluster's defaults apply",
    ),
    Option(
        name="poll_interval",
        kind="duration",
        default=0.25,
        doc="time between the engine's polls (answered from the watch cache)",
    ),
    Option(
        name="timeout",
        kind="duration",
        default=15.0,
        doc="how long one API call may take",
    ),
    Option(
        name="watch_seconds",
        kind="duration",
        default=300.0,
        doc="how long one watch request lasts before it is renewed (whole seconds)",
    ),
    Option(
        name="insecure",
        kind="bool",
        default=False,
        doc="`true`: skip the TLS certificate check (warned with "
        "`vmmove.InsecureConnectionWarning` and logged). Without it, a context that sets "
        "`insecure-skip-tls-verify` is refused with `InvalidInput`",
    ),
)

"""The plugin manager: hook specs, then blocked names, then entry points, then built-ins.

Set ``VMMOVE_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points (only built-ins load), and
``VMMOVE_BLOCK_PLUGINS=name,name`` to block plugins by entry-point name.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from vmmove import hookspecs
from vmmove.errors import BackendNotFound, InvalidInput

if TYPE_CHECKING:
    from vmmove.backend import Backend, Capabilities
    from vmmove.options import Option
    from vmmove.placement import PlacementRegistry
    from vmmove.policy import Policy

__all__ = [
    "BackendFactory",
    "BackendRegistry",
    "BackendSpec",
    "Plugins",
    "capabilities_markdown",
    "load_plugins",
    "side_by_side",
]

log = logging.getLogger(__name__)

#: ``factory(uri, options) -> Backend``. A backend that declares its options (``options=``
#: in :meth:`BackendRegistry.add`) gets them parsed by :func:`vmmove.options.parse`: every
#: value converted to its declared kind, secrets as :class:`vmmove.secrets.Secret`, unknown
#: names refused. One that declares none gets the raw keyword arguments.
BackendFactory = Callable[[str, Mapping[str, Any]], "Backend"]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
# Schemes of the backends this project ships, for a helpful hint when one is missing.
_DISTS = {
    "qemu": "vmmove-libvirt",
    "libvirt": "vmmove-libvirt",
    "vsphere": "vmmove-vsphere",
    "kubevirt": "vmmove-kubevirt",
    "hyperv": "vmmove-hyperv",
    "nutanix": "vmmove-nutanix",
}
_BUILTINS = {"sim": "vmmove.sim.plugin"}  # entry-point name -> module


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    scheme: str
    factory: BackendFactory
    description: str
    capabilities: Capabilities | None
    plugin: str
    #: the options the backend accepts (``None``: it parses its own, the older way)
    options: tuple[Option, ...] | None = None
    #: URI query keys that belong to the platform's own URI (libvirt's ``socket``)
    passthrough: tuple[str, ...] = ()

    def build(self, uri: str, kwargs: Mapping[str, Any]) -> Backend:
        """Parse the options as declared, then call the factory."""
        if self.options is None:
            return self.factory(uri, kwargs)
        from vmmove.options import parse  # noqa: PLC0415 (not on the import path of --help)

        parsed = parse(
            self.options, uri=uri, kwargs=kwargs, scheme=self.scheme, passthrough=self.passthrough
        )
        return self.factory(uri, parsed)


class BackendRegistry:
    """Handed to ``vmmove_add_backends``: a plugin calls :meth:`add` once per scheme."""

    def __init__(self) -> None:
        self._specs: dict[str, BackendSpec] = {}
        self._current_plugin = ""

    def add(
        self,
        scheme: str,
        factory: BackendFactory,
        *,
        description: str = "",
        capabilities: Capabilities | None = None,
        options: tuple[Option, ...] | None = None,
        passthrough: tuple[str, ...] = (),
    ) -> None:
        if not _SCHEME.match(scheme):
            raise InvalidInput(f"invalid URI scheme {scheme!r}")
        if scheme in self._specs:
            other = self._specs[scheme].plugin
            raise InvalidInput(
                f"scheme {scheme!r} is registered twice ({other}, {self._current_plugin})"
            )
        self._specs[scheme] = BackendSpec(
            scheme=scheme,
            factory=factory,
            description=description,
            capabilities=capabilities,
            plugin=self._current_plugin,
            options=options,
            passthrough=passthrough,
        )

    def get(self, scheme: str) -> BackendSpec:
        """The backend for ``scheme``; ``qemu+tcp`` falls back to ``qemu``."""
        spec = self._specs.get(scheme) or self._specs.get(scheme.split("+", 1)[0])
        if spec is not None:
            return spec
        known = ", ".join(sorted(self._specs)) or "none"
        base = scheme.split("+", 1)[0]
        hint = f"; install its plugin: pip install {_DISTS[base]}" if base in _DISTS else ""
        raise BackendNotFound(f"no backend serves {scheme}:// (installed: {known}){hint}")

    def all(self) -> list[BackendSpec]:
        return sorted(self._specs.values(), key=lambda s: s.scheme)


class Plugins:
    """What the loaded plugins contribute, gathered once."""

    def __init__(self, pm: pluggy.PluginManager, broken: dict[str, str]) -> None:
        from vmmove.placement import PlacementRegistry  # noqa: PLC0415 (cycle)

        self.pm = pm
        self.broken = broken  # entry-point name -> why it failed to load
        self.backends = BackendRegistry()
        for impl in pm.hook.vmmove_add_backends.get_hookimpls():
            self.backends._current_plugin = impl.plugin_name
            impl.function(registry=self.backends)
        self.backends._current_plugin = ""
        self.policies: list[Policy] = [p for ps in pm.hook.vmmove_add_policies() for p in ps]
        self.placement: PlacementRegistry = PlacementRegistry()
        pm.hook.vmmove_add_placement(registry=self.placement)
        self.has_observers = bool(pm.hook.vmmove_migration_event.get_hookimpls())


_lock = threading.Lock()
_loaded: Plugins | None = None


def _load() -> Plugins:
    pm = pluggy.PluginManager("vmmove")
    pm.add_hookspecs(hookspecs)
    for name in filter(None, os.environ.get("VMMOVE_BLOCK_PLUGINS", "").split(",")):
        pm.set_blocked(name.strip())
    broken: dict[str, str] = {}
    if not os.environ.get("VMMOVE_DISABLE_PLUGIN_AUTOLOAD"):
        for ep in importlib.metadata.entry_points(group="vmmove"):
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
                pm.check_pending()  # a misspelled hook is this plugin's fault, not everyone's
            except Exception as exc:  # a broken third-party plugin must not break the rest
                if (plugin := pm.get_plugin(ep.name)) is not None:
                    pm.unregister(plugin)
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("vmmove plugin %r failed to load: %s", ep.name, exc)
    for name, module in _BUILTINS.items():
        if pm.is_blocked(name) or pm.get_plugin(name) is not None:
            continue
        plugin = importlib.import_module(module)
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
    pm.check_pending()
    return Plugins(pm, broken)


def load_plugins(reload: bool = False) -> Plugins:
    """The process-wide plugins (backends, policies, placement, observers, and the pluggy
    manager as ``.pm``), loaded on first use (``import vmmove`` loads none)."""
    global _loaded  # noqa: PLW0603 (one process-wide registry, behind a lock)
    with _lock:
        if _loaded is None or reload:
            _loaded = _load()
        return _loaded


def side_by_side(
    specs: Iterable[BackendSpec],
) -> list[tuple[str, tuple[str, ...], Capabilities | None]]:
    """One column per plugin: its name, the schemes it serves, what it declares (one
    plugin's schemes that declare alike share a column; the simulator first)."""
    columns: dict[tuple[str, Capabilities | None], list[str]] = {}
    for spec in specs:
        columns.setdefault((spec.plugin, spec.capabilities), []).append(spec.scheme)
    ordered = sorted(columns.items(), key=lambda item: (item[0][0] != "sim", item[0][0]))
    return [(plugin, tuple(sorted(schemes)), caps) for (plugin, caps), schemes in ordered]


def capabilities_markdown(specs: Iterable[BackendSpec]) -> str:
    """The capabilities table of docs/backends/index.md, from what the plugins declare."""
    from vmmove.backend import Capabilities  # noqa: PLC0415 (not on the path of --help)

    columns = side_by_side(specs)
    names = [f.name for f in dataclasses.fields(Capabilities)]
    head = " | ".join(" / ".join(f"`{s}`" for s in schemes) for _, schemes, _ in columns)
    rows = [f"| capability | {head} |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [
            "not declared" if caps is None else ("yes" if caps.has(name) else "no")
            for _, _, caps in columns
        ]
        rows.append(f"| `{name}`: {Capabilities.describe(name)} | {' | '.join(cells)} |")
    return "\n".join(rows)

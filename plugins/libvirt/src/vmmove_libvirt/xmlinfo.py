"""Facts read from libvirt's XML: a domain's definition, a host's capabilities, an emulator's
domain capabilities. Pure functions over strings, so they are tested without a daemon."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from vmmove.errors import ConnectionFailed

__all__ = [
    "NETWORK_POOLS",
    "Disk",
    "DomainFacts",
    "HostFacts",
    "domain_facts",
    "host_facts",
    "machine_version",
    "under",
]

#: Storage pool types whose volumes every host of a cluster reaches.
NETWORK_POOLS = frozenset(
    {"netfs", "rbd", "gluster", "iscsi", "iscsi-direct", "sheepdog", "vstorage", "mpath"}
)


@dataclass(frozen=True, kw_only=True)
class Disk:
    target: str  # vda, sdb...
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, dir, network, volume
    source: str  # path, "protocol:name" or "pool/volume"
    shared: bool
    why: str  # what made it shared, or "" when it is local
    readonly: bool = False

    def describe(self) -> str:
        return f"{self.target} ({self.source})"


@dataclass(frozen=True, kw_only=True)
class DomainFacts:
    name: str
    uuid: str
    virt_type: str  # "kvm", or "qemu" for TCG
    arch: str
    machine: str
    emulator: str
    memory: int  # bytes
    vcpus: int
    cpu_mode: str  # "custom", "host-model", "host-passthrough", "maximum", "" (none given)
    cpu_xml: str | None
    disks: tuple[Disk, ...]
    hostdevs: int

    @property
    def local_disks(self) -> tuple[Disk, ...]:
        return tuple(d for d in self.disks if not d.shared)


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    uuid: str
    arch: str
    model: str
    vendor: str
    features: frozenset[str]
    cpu_xml: str | None


_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
    "p": 1 << 50,
    "pib": 1 << 50,
    "pb": 1000**5,
    "e": 1 << 60,
    "eib": 1 << 60,
    "eb": 1000**6,
}
# Plain ASCII digits, at most 20 (a 64-bit count): int() alone would take "+1_0", "١٢" and
# fail on 5000 digits with a ValueError.
_COUNT = re.compile(r"[0-9]{1,20}")


def _clip(text: str, limit: int = 60) -> str:
    """A value quoted in a message: libvirt's answer is not echoed at length."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse(xml: str, root_tag: str, what: str) -> ET.Element:
    """The root element of libvirt's answer, or :class:`ConnectionFailed` when it is not XML
    or not the document asked for (the parser's message says where; the text is not echoed,
    a domain's XML can be large)."""
    if not isinstance(xml, str | bytes):
        raise ConnectionFailed(f"unreadable {what} from libvirt: {type(xml).__name__}, not XML")
    try:
        root = ET.fromstring(xml)  # noqa: S314 (libvirt's own output)
    except (ET.ParseError, ValueError) as exc:  # ValueError: lone surrogates in a str
        raise ConnectionFailed(f"unreadable {what} from libvirt: not XML ({exc})") from None
    if root.tag != root_tag:
        raise ConnectionFailed(
            f"unreadable {what} from libvirt: root element {_clip(root.tag)}, not <{root_tag}>"
        )
    return root


def _memory(el: ET.Element | None) -> int:
    text = (el.text or "").strip() if el is not None else ""
    if el is None or not text:
        return 0
    unit = el.get("unit") or "KiB"
    if _COUNT.fullmatch(text) is None or unit.lower() not in _UNITS:
        # Guessing would misstate the VM's size by orders of magnitude: refuse.
        raise ConnectionFailed(
            f"domain XML: <memory unit={_clip(unit)}> {_clip(text)} is not a size"
        )
    return int(text) * _UNITS[unit.lower()]


def _vcpus(el: ET.Element | None) -> int:
    text = (el.text or "").strip() if el is not None else ""
    if not text:
        return 1  # libvirt's default
    if _COUNT.fullmatch(text) is None or int(text) < 1:
        raise ConnectionFailed(f"domain XML: <vcpu> {_clip(text)} is not a positive count")
    return int(text)


def under(path: str, roots: Sequence[str]) -> str | None:
    """The first of ``roots`` that contains ``path``, or ``None``."""
    for root in roots:
        if root in ("/", path) or path.startswith(root + "/"):
            return root
    return None


def _disk(el: ET.Element, shared_paths: Sequence[str]) -> Disk | None:
    kind = el.get("type", "file")
    device = el.get("device", "disk")
    target_el = el.find("target")
    target = target_el.get("dev", "?") if target_el is not None else "?"
    src = el.find("source")
    readonly = el.find("readonly") is not None
    if src is None:
        return None  # an empty CD-ROM or floppy drive: nothing to move
    if kind == "network":
        name = src.get("name", "")
        protocol = src.get("protocol", "network")
        return Disk(
            target=target,
            device=device,
            kind=kind,
            source=f"{protocol}:{name}",
            shared=True,
            why=f"network disk ({protocol})",
            readonly=readonly,
        )
    if kind == "volume":
        source = f"{src.get('pool', '')}/{src.get('volume', '')}"
        return Disk(
            target=target,
            device=device,
            kind=kind,
            source=source,
            shared=False,
            why="",
            readonly=readonly,
        )
    path = src.get("file") or src.get("dev") or src.get("dir") or ""
    if not path:
        return None
    shared, why = False, ""
    if el.find("shareable") is not None:
        shared, why = True, "marked <shareable/>"
    elif (root := under(path, shared_paths)) is not None:
        shared, why = True, f"under shared path {root}"
    return Disk(
        target=target,
        device=device,
        kind=kind,
        source=path,
        shared=shared,
        why=why,
        readonly=readonly,
    )


def domain_facts(xml: str, shared_paths: Sequence[str] = ()) -> DomainFacts:
    """What vmmove needs from a domain's XML. Volume disks come back local: whether their
    pool is shared takes a call to the host (see :data:`NETWORK_POOLS`)."""
    root = _parse(xml, "domain", "domain XML")
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    disks = [_disk(d, shared_paths) for d in root.findall("devices/disk")]
    return DomainFacts(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        virt_type=root.get("type", ""),
        arch=os_type.get("arch", "") if os_type is not None else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        emulator=(root.findtext("devices/emulator") or "").strip(),
        memory=_memory(root.find("memory")),
        vcpus=_vcpus(root.find("vcpu")),
        cpu_mode=(cpu.get("mode", "custom") if cpu is not None else ""),
        cpu_xml=ET.tostring(cpu, encoding="unicode") if cpu is not None else None,
        disks=tuple(d for d in disks if d is not None),
        hostdevs=len(root.findall("devices/hostdev")),
    )


def host_facts(capabilities_xml: str) -> HostFacts:
    """The host's UUID and CPU from ``virConnectGetCapabilities``."""
    root = _parse(capabilities_xml, "capabilities", "host capabilities")
    cpu = root.find("host/cpu")
    return HostFacts(
        uuid=root.findtext("host/uuid", ""),
        arch=root.findtext("host/cpu/arch", ""),
        model=root.findtext("host/cpu/model", ""),
        vendor=root.findtext("host/cpu/vendor", ""),
        features=frozenset(
            f.get("name", "") for f in root.findall("host/cpu/feature") if f.get("name")
        ),
        cpu_xml=ET.tostring(cpu, encoding="unicode") if cpu is not None else None,
    )


_MACHINE_VERSION = re.compile(r"-([0-9]{1,6})\.([0-9]{1,6})$")  # ASCII, int()-safe


def machine_version(domcapabilities_xml: str) -> tuple[int, int] | None:
    """The QEMU release of an emulator, from its default machine type in the domain
    capabilities (``pc-i440fx-10.0``: QEMU 10.0). Versioned machine types are named after the
    release that added them, and an emulator's newest one is its own release."""
    root = _parse(domcapabilities_xml, "domainCapabilities", "domain capabilities")
    match = _MACHINE_VERSION.search(root.findtext("machine", "").strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))

"""Fuzzing what libvirt sends back: domain XML, host capabilities, domain capabilities and
job statistics. Whatever arrives, only vmmove errors escape (nonsense is ConnectionFailed),
and well-formed documents, however odd their values, still read right."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmmove.errors import ConnectionFailed
from vmmove.model import Figures
from vmmove.testing.fuzz import anything, only_vmmove_errors
from vmmove_libvirt.stats import Sample, figures, sample
from vmmove_libvirt.xmlinfo import domain_facts, host_facts, machine_version

FUZZ = settings(max_examples=200, deadline=None)

#: Text as a broken daemon or a wrong endpoint might send it: random, random bytes decoded
#: (lone surrogates included), XML-looking fragments.
junk_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.lists(
        st.sampled_from(["<", ">", "</", "/>", "domain", "memory", "'", '"', "=", "&", "&amp;",
                         "<!--", "-->", "<?xml version='1.0'?>", "<![CDATA[", "]]>", " ", "1"]),
        max_size=30,
    ).map("".join),
)  # fmt: skip
#: Characters XML 1.0 can carry (no control characters, no surrogates).
xml_chars = st.characters(exclude_categories=("Cs", "Cc", "Cn"))
xml_text = st.text(xml_chars, max_size=30)


def _xml(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    el.text = text
    return el


#: Random element trees from the vocabulary the parsers look for, so the fuzzer reaches
#: their insides and not only the XML parser.
TAGS = ["domain", "name", "uuid", "memory", "vcpu", "os", "type", "cpu", "model", "devices",
        "emulator", "disk", "source", "target", "readonly", "shareable", "hostdev", "host",
        "arch", "vendor", "feature", "machine", "x"]  # fmt: skip
ATTRS = ["type", "unit", "arch", "machine", "mode", "device", "dev", "file", "dir", "name",
         "protocol", "pool", "volume"]  # fmt: skip


short_text = st.none() | st.text(xml_chars, max_size=8) | st.integers(-5, 2**70).map(str)


@st.composite
def trees(draw: st.DrawFn, root: str, depth: int = 3) -> ET.Element:
    el = ET.Element(root)
    for attr in draw(st.lists(st.sampled_from(ATTRS), max_size=2)):
        el.set(attr, draw(short_text) or "")
    el.text = draw(short_text)
    if depth > 0:
        for tag in draw(st.lists(st.sampled_from(TAGS), max_size=3)):
            el.append(draw(trees(tag, depth - 1)))
    return el


# ---- junk ------------------------------------------------------------------------------------


@FUZZ
@given(text=junk_text | st.sampled_from(["", "<domain", "<domain/>x", "<a/>"]))
@example(text="not xml")  # ParseError escaped
@example(text="")  # ParseError: no element found
@example(text="<domain>\udc80</domain>")  # UnicodeEncodeError (a lone surrogate) escaped
def test_junk_text(text: str) -> None:
    only_vmmove_errors(domain_facts, text, ["/mnt/nfs"])
    only_vmmove_errors(host_facts, text)
    only_vmmove_errors(machine_version, text)


@FUZZ
@given(value=anything | st.binary(max_size=30))
@example(value=None)  # TypeError escaped
def test_not_even_text(value: Any) -> None:
    for fn in (domain_facts, host_facts, machine_version):
        only_vmmove_errors(fn, value)


@FUZZ
@given(
    root=st.sampled_from(["domain", "capabilities", "domainCapabilities"]).flatmap(trees),
    shared=st.lists(st.sampled_from(["/", "/mnt/nfs", "", "/var"]), max_size=2),
)
def test_random_trees(root: ET.Element, shared: list[str]) -> None:
    text = _xml(root)
    facts = only_vmmove_errors(domain_facts, text, shared)
    if facts is not None:
        assert facts.memory >= 0
        assert facts.vcpus >= 1
        assert all(isinstance(d.source, str) for d in facts.disks)
    only_vmmove_errors(host_facts, text)
    version = only_vmmove_errors(machine_version, text)
    assert version is None or all(isinstance(v, int) and v >= 0 for v in version)


# ---- well-formed domains, perturbed -------------------------------------------------------

#: libvirt's memory units and what they are worth, written out independently of the parser.
UNITS = {"b": 1, "bytes": 1, "KB": 10**3, "k": 2**10, "KiB": 2**10, "MB": 10**6, "M": 2**20,
         "MiB": 2**20, "GB": 10**9, "G": 2**30, "GiB": 2**30, "TB": 10**12, "T": 2**40,
         "TiB": 2**40, "PB": 10**15, "P": 2**50, "PiB": 2**50, "EB": 10**18, "E": 2**60,
         "EiB": 2**60}  # fmt: skip
#: Perturbations that leave a readable document, and those that make it useless.
TOLERATED = [None, "drop_memory", "empty_memory", "drop_vcpu", "drop_os", "drop_cpu",
             "padded_numbers", "extra_elements"]  # fmt: skip
REFUSED = ["junk_memory", "negative_memory", "huge_memory", "junk_unit", "junk_vcpu",
           "zero_vcpu", "wrong_root", "truncated"]  # fmt: skip
not_a_count = xml_text.filter(lambda t: not t.strip().isascii() or not t.strip().isdigit())


@st.composite
def domains(draw: st.DrawFn) -> tuple[str, dict[str, Any], str | None]:
    """A domain XML, what it says, and the perturbation applied (``None``: none)."""
    perturb = draw(st.sampled_from(TOLERATED + REFUSED))
    name, uuid = draw(xml_text), draw(st.uuids().map(str))
    virt = draw(st.sampled_from(["kvm", "qemu"]) | xml_text)
    arch, machine = draw(xml_text), draw(xml_text)
    unit = draw(st.sampled_from(sorted(UNITS)))
    unit_written = draw(st.sampled_from([unit, unit.lower(), unit.upper()]))
    amount = draw(st.integers(0, 2**40))
    vcpus = draw(st.integers(1, 4096))
    cpu_mode = draw(st.sampled_from(["custom", "host-model", "host-passthrough", "maximum"]))

    root = ET.Element("domain", {"type": virt})
    _sub(root, "name", name)
    _sub(root, "uuid", uuid)
    memory = _sub(root, "memory", str(amount), unit=unit_written)
    vcpu = _sub(root, "vcpu", str(vcpus), placement="static")
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch=arch, machine=machine)
    cpu = _sub(root, "cpu", mode=cpu_mode)
    _sub(cpu, "model", draw(xml_text))
    devices = _sub(root, "devices")
    _sub(devices, "emulator", "/usr/bin/qemu-system-x86_64")

    disks: dict[str, tuple[str, bool]] = {}  # target -> (source, shared)
    for i, kind in enumerate(
        draw(st.lists(st.sampled_from(["file", "block", "network"]), max_size=5))
    ):
        target = f"vd{i}"
        disk = _sub(devices, "disk", type=kind, device="disk")
        _sub(disk, "target", dev=target)
        if kind == "network":
            img = draw(xml_text)
            _sub(disk, "source", protocol="rbd", name=img)
            disks[target] = (f"rbd:{img}", True)
            continue
        on_nfs = draw(st.booleans())
        shareable = draw(st.booleans())
        path = ("/mnt/nfs/" if on_nfs else "/var/lib/images/") + draw(
            st.text(st.characters(categories=("L", "N")), min_size=1, max_size=10)
        )
        _sub(disk, "source", **{"file" if kind == "file" else "dev": path})
        if shareable:
            _sub(disk, "shareable")
        disks[target] = (path, on_nfs or shareable)
    for _ in range(draw(st.integers(0, 2))):
        _sub(devices, "hostdev", mode="subsystem", type="pci")
    hostdevs = len(root.findall("devices/hostdev"))

    expected: dict[str, Any] = {
        "name": name, "uuid": uuid, "virt_type": virt, "arch": arch, "machine": machine,
        "memory": amount * UNITS[unit], "vcpus": vcpus, "cpu_mode": cpu_mode, "disks": disks,
        "hostdevs": hostdevs,
    }  # fmt: skip
    if perturb == "drop_memory":
        root.remove(memory)
        expected["memory"] = 0
    elif perturb == "empty_memory":
        memory.text = draw(st.sampled_from(["", " ", None]))
        expected["memory"] = 0
    elif perturb == "drop_vcpu":
        root.remove(vcpu)
        expected["vcpus"] = 1  # libvirt's default
    elif perturb == "drop_os":
        root.remove(os_el)
        expected["arch"] = expected["machine"] = ""
    elif perturb == "drop_cpu":
        root.remove(cpu)
        expected["cpu_mode"] = ""
    elif perturb == "padded_numbers":
        memory.text, vcpu.text = f"  {amount} ", f" {vcpus}  "
    elif perturb == "extra_elements":
        for _ in range(draw(st.integers(1, 3))):
            root.append(draw(trees(draw(st.sampled_from(["x", "metadata", "features"])), 1)))
    elif perturb == "junk_memory":
        memory.text = draw(not_a_count.filter(lambda t: t.strip() != ""))
    elif perturb == "negative_memory":
        memory.text = str(-draw(st.integers(1, 2**40)))
    elif perturb == "huge_memory":
        memory.text = "9" * draw(st.integers(21, 5000))  # int() raises past 4300 digits
    elif perturb == "junk_unit":
        memory.set(
            "unit", draw(xml_text.filter(lambda u: bool(u) and u.lower() not in _lower_units))
        )
    elif perturb == "junk_vcpu":
        vcpu.text = draw(not_a_count.filter(lambda t: t.strip() != ""))
    elif perturb == "zero_vcpu":
        vcpu.text = draw(st.sampled_from(["0", "-1", "-4096"]))
    elif perturb == "wrong_root":
        root.tag = draw(st.sampled_from(["domainsnapshot", "capabilities", "x"]))
    text = _xml(root)
    if perturb == "truncated":
        text = text[: draw(st.integers(0, len(text) - 1))]
    return text, expected, perturb


_lower_units = {u.lower() for u in UNITS}


@FUZZ
@given(case=domains())
@example(case=("<domain><memory>12abc</memory></domain>", {}, "junk_memory"))  # ValueError
@example(case=("<domain><vcpu>x</vcpu></domain>", {}, "junk_vcpu"))  # ValueError
@example(case=(f"<domain><memory>{'9' * 5000}</memory></domain>", {}, "huge_memory"))
@example(case=("<domain><memory unit='parsec'>1</memory></domain>", {}, "junk_unit"))
@example(case=("<domainsnapshot/>", {}, "wrong_root"))
def test_perturbed_domains(case: tuple[str, dict[str, Any], str | None]) -> None:
    text, want, perturb = case
    if perturb in REFUSED:
        with pytest.raises(ConnectionFailed) as info:
            domain_facts(text, ["/mnt/nfs"])
        assert len(str(info.value)) < 300  # says what was wrong, does not echo the document
        return
    facts = domain_facts(text, ["/mnt/nfs"])
    got = {
        "name": facts.name, "uuid": facts.uuid, "virt_type": facts.virt_type,
        "arch": facts.arch, "machine": facts.machine, "memory": facts.memory,
        "vcpus": facts.vcpus, "cpu_mode": facts.cpu_mode, "hostdevs": facts.hostdevs,
        "disks": {d.target: (d.source, d.shared) for d in facts.disks},
    }  # fmt: skip
    assert got == want
    assert (facts.cpu_xml is None) == (perturb == "drop_cpu")


def test_a_whitespace_vcpu_is_libvirts_default() -> None:
    # int("") raised ValueError for <vcpu> </vcpu>.
    assert domain_facts("<domain><vcpu> </vcpu></domain>").vcpus == 1


# ---- capabilities and domain capabilities ----------------------------------------------------


@st.composite
def capabilities(draw: st.DrawFn) -> tuple[str, dict[str, Any], str | None]:
    perturb = draw(st.sampled_from([None, "drop_cpu", "nameless_feature", "extra", "wrong_root",
                                    "truncated"]))  # fmt: skip
    uuid, arch, model, vendor = (draw(xml_text) for _ in range(4))
    features = draw(st.lists(xml_text.filter(bool), max_size=6))
    root = ET.Element("capabilities")
    host = _sub(root, "host")
    _sub(host, "uuid", uuid)
    cpu = _sub(host, "cpu")
    _sub(cpu, "arch", arch)
    _sub(cpu, "model", model)
    _sub(cpu, "vendor", vendor)
    for f in features:
        _sub(cpu, "feature", name=f)
    want: dict[str, Any] = {"uuid": uuid, "arch": arch, "model": model, "vendor": vendor,
                            "features": frozenset(features), "cpu": True}  # fmt: skip
    if perturb == "drop_cpu":
        host.remove(cpu)
        want.update(arch="", model="", vendor="", features=frozenset(), cpu=False)
    elif perturb == "nameless_feature":
        _sub(cpu, "feature", policy="require")  # no name: not a feature
    elif perturb == "extra":
        root.append(draw(trees("guest", 2)))
    elif perturb == "wrong_root":
        root.tag = "domain"
    text = _xml(root)
    if perturb == "truncated":
        text = text[: draw(st.integers(0, len(text) - 1))]
    return text, want, perturb


@FUZZ
@given(case=capabilities())
@example(case=("<", {}, "truncated"))  # ParseError escaped
def test_perturbed_capabilities(case: tuple[str, dict[str, Any], str | None]) -> None:
    text, want, perturb = case
    if perturb in ("wrong_root", "truncated"):
        with pytest.raises(ConnectionFailed):
            host_facts(text)
        return
    h = host_facts(text)
    got = {"uuid": h.uuid, "arch": h.arch, "model": h.model, "vendor": h.vendor,
           "features": h.features, "cpu": h.cpu_xml is not None}  # fmt: skip
    assert got == want


@FUZZ
@given(
    prefix=st.sampled_from(["pc-i440fx-", "pc-q35-", "virt-", "pseries-", "s390-ccw-virtio-"]),
    major=st.integers(0, 10**6 - 1),
    minor=st.integers(0, 10**6 - 1),
    junk=xml_text,
    shape=st.sampled_from(["versioned", "unversioned", "junk", "none", "huge", "wrong_root"]),
)
@example(prefix="pc-", major=0, minor=0, junk="", shape="huge")  # ValueError (> 4300 digits)
def test_machine_versions(prefix: str, major: int, minor: int, junk: str, shape: str) -> None:
    root = ET.Element("domainCapabilities")
    _sub(root, "path", "/usr/bin/qemu-system-x86_64")
    machine = {
        "versioned": f"{prefix}{major}.{minor}",
        "unversioned": prefix.rstrip("-"),
        "junk": junk,
        "huge": f"{prefix}{'1' * 5000}.0",
    }.get(shape)
    if machine is not None:
        _sub(root, "machine", f" {machine} ")
    if shape == "wrong_root":
        root.tag = "capabilities"
        with pytest.raises(ConnectionFailed):
            machine_version(_xml(root))
        return
    got = machine_version(_xml(root))
    if shape == "versioned":
        assert got == (major, minor)
    elif shape == "junk":
        assert got is None or all(isinstance(v, int) for v in got)
    else:
        assert got is None


# ---- job statistics ----------------------------------------------------------------------

KEYS = ["type", "data_total", "data_processed", "data_remaining", "memory_bps",
        "memory_dirty_rate", "memory_page_size", "memory_iteration", "downtime",
        "memory_postcopy_requests", "time_elapsed"]  # fmt: skip
odd_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**64, max_value=10**400),
    st.floats(),  # NaN and infinities included
    st.sampled_from([float("nan"), float("inf"), -float("inf"), True, False, -1, 10**400]),
)
junk_stats = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), anything | odd_numbers)


def _sane(s: Sample) -> None:
    for name in ("data_total", "data_processed", "data_remaining", "iteration",
                 "expected_downtime_ms", "postcopy_requests"):  # fmt: skip
        value = getattr(s, name)
        assert value is None or (isinstance(value, int) and value >= 0), (name, value)
    for name in ("transfer_rate", "dirty_rate"):
        value = getattr(s, name)
        assert value is None or (isinstance(value, float) and math.isfinite(value)), (name, value)
    assert isinstance(s.started, bool)


@FUZZ
@given(stats=junk_stats)
@example(stats={"data_total": float("nan")})  # ValueError escaped
@example(stats={"memory_bps": float("inf")})  # OverflowError escaped
@example(stats={"memory_dirty_rate": 10**400, "memory_iteration": 2})  # OverflowError (float)
def test_junk_job_statistics(stats: dict[str, Any]) -> None:
    s = only_vmmove_errors(sample, stats)
    if s is not None:
        _sane(s)


@FUZZ
@given(
    final=st.none() | junk_stats | anything,
    last=st.none() | junk_stats.map(sample),
    total=st.floats(0, 1e6),
    completed=st.booleans(),
)
@example(final={"data_processed": float("nan")}, last=None, total=1.0, completed=True)
@example(final=[1], last=None, total=1.0, completed=False)  # AttributeError escaped
def test_junk_final_statistics(
    final: Any, last: Sample | None, total: float, completed: bool
) -> None:
    figs = only_vmmove_errors(figures, final, last, total, completed=completed)
    if figs is not None:
        assert isinstance(figs, Figures)
        assert figs.total_time == total
        assert figs.data_sent is None or figs.data_sent >= 0
        assert figs.downtime_ms is None or math.isfinite(figs.downtime_ms)


@FUZZ
@given(value=anything.filter(lambda v: not isinstance(v, dict)))
def test_statistics_that_are_no_mapping(value: Any) -> None:
    with pytest.raises(ConnectionFailed):
        sample(value)


counter = st.integers(0, 2**63)


@FUZZ
@given(
    values=st.fixed_dictionaries(
        {
            "type": st.just(2),
            "data_total": counter,
            "data_processed": counter,
            "data_remaining": counter,
            "memory_bps": counter,
            "memory_dirty_rate": st.integers(0, 2**30),
            "memory_page_size": st.sampled_from([4096, 65536, 2**21]),
            "memory_iteration": st.integers(0, 1000),
            "downtime": st.integers(0, 10**6),
        }
    ),
    drop=st.sets(st.sampled_from(KEYS)),
)
def test_valid_statistics_read_right(values: dict[str, int], drop: set[str]) -> None:
    stats = {k: v for k, v in values.items() if k not in drop}
    s = sample(stats)
    _sane(s)
    assert s.data_total == stats.get("data_total")
    assert s.data_processed == stats.get("data_processed")
    assert s.data_remaining == stats.get("data_remaining")
    assert s.expected_downtime_ms == stats.get("downtime")
    assert s.iteration == (stats.get("memory_iteration") or None)
    assert s.transfer_rate == (float(stats["memory_bps"]) if stats.get("memory_bps") else None)
    pages = stats.get("memory_dirty_rate")
    if pages is not None and (pages > 0 or (s.iteration or 0) >= 2):
        assert s.dirty_rate == float(pages * stats.get("memory_page_size", 4096))
    else:
        assert s.dirty_rate is None
    figs = figures(stats, None, 2.0, completed=True)
    if "data_processed" in stats:
        assert figs.data_sent == stats["data_processed"]
        assert figs.downtime_ms == (float(stats["downtime"]) if "downtime" in stats else None)

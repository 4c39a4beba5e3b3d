"""The parts of the libvirt backend that need no daemon: URIs and options, XML, statistics,
and the plugin's registration."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmmove.errors import InsecureConnectionWarning, InvalidInput
from vmmove.model import Figures, MiB
from vmmove.secrets import Secret
from vmmove_libvirt.config import (
    client_uri,
    migration_address,
    migration_uri,
    parse,
    peer_uri,
    redact,
)
from vmmove_libvirt.stats import (
    DIRTYRATE_MEASURED,
    DIRTYRATE_MEASURING,
    delta_ratio,
    dirty_rate,
    figures,
    nonzero_memory,
    sample,
)
from vmmove_libvirt.xmlinfo import domain_facts, host_facts, machine_version

# ---- URIs and options ----------------------------------------------------------------------


def test_one_uri_several_hosts() -> None:
    cfg = parse("qemu+tcp://127.0.0.1:16600,127.0.0.1:16601/system", {})
    assert cfg.uris == ("qemu+tcp://127.0.0.1:16600/system", "qemu+tcp://127.0.0.1:16601/system")
    assert cfg.name == "default"


def test_the_first_hosts_user_and_the_query_apply_to_all() -> None:
    cfg = parse("qemu+ssh://root@kvm1,kvm2,admin@kvm3/system?keyfile=/k", {"cluster": "lab"})
    assert cfg.uris == (
        "qemu+ssh://root@kvm1/system?keyfile=/k",
        "qemu+ssh://root@kvm2/system?keyfile=/k",
        "qemu+ssh://admin@kvm3/system?keyfile=/k",
    )
    assert cfg.name == "lab"


def test_named_cluster_with_hosts_option() -> None:
    hosts = ["qemu+unix:///system?socket=/run/a/libvirt-sock", "qemu+ssh://kvm2/system"]
    cfg = parse("libvirt://lab", {"hosts": " ".join(hosts), "copy_storage": "all"})
    assert (cfg.name, cfg.uris) == ("lab", tuple(hosts))
    assert cfg.copy_storage == "all"
    # commas before a scheme separate too; a comma inside an authority is the multi-host form
    cfg = parse("libvirt://lab", {"hosts": "qemu+tcp://a,b/system, qemu+ssh://c/system"})
    assert cfg.uris == ("qemu+tcp://a/system", "qemu+tcp://b/system", "qemu+ssh://c/system")
    # a list from Python (or a config file's array) is the same hosts
    assert (
        parse("libvirt://lab", {"hosts": ["qemu+tcp://a,b/system", "qemu+ssh://c/system"]}) == cfg
    )


def test_options_in_the_uri_query_stay_out_of_the_uris_libvirt_opens() -> None:
    cfg = parse("qemu+tcp://a,b/system?copy_storage=all&keyfile=/k", {})
    assert cfg.copy_storage == "all"
    assert cfg.uris == ("qemu+tcp://a/system?keyfile=/k", "qemu+tcp://b/system?keyfile=/k")
    cfg = parse("libvirt://lab?copy_storage=inc", {"hosts": "qemu:///system"})
    assert cfg.copy_storage == "inc"


def test_a_local_uri_is_a_cluster_of_one() -> None:
    assert parse("qemu:///system", {}).uris == ("qemu:///system",)


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("libvirt://lab", {}),  # no hosts
        ("libvirt://lab/extra", {"hosts": "qemu:///system"}),
        ("libvirt://lab?socket=/s", {"hosts": "qemu:///system"}),  # libvirt's key, no host's
        ("qemu:///system?typo=1", {}),  # neither vmmove's option nor libvirt's URI key
        ("qemu:///system?password=x", {}),  # a secret never goes in a URI
        ("qemu+tcp://a,,b/system", {}),
        ("qemu+tcp://a,a/system", {}),
        ("vsphere://vc", {}),
        ("qemu:///system", {"hosts": ["qemu+tcp://b/system", 3]}),  # a list of text only
        ("qemu:///system", {"hosts": "vsphere://x"}),
        ("qemu:///system", {"hosts": " "}),
        # a core option (the policy's shutdown_timeout now), or the simulator's
        ("qemu:///system", {"shutdown_timeout": 5}),
        ("qemu:///system", {"clock": "x"}),
        ("qemu:///system", {"copy_storage": "some"}),
        ("qemu:///system", {"shared_paths": "/ok,relative/dir"}),
        ("qemu:///system", {"cluster": ""}),
        ("qemu:///system", {"bogus": 1}),
        ("qemu:///system", {"password": 42}),
    ],
)
def test_malformed_input_is_refused(uri: str, options: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        parse(uri, options)


def test_password_becomes_a_secret_and_never_shows() -> None:
    cfg = parse("qemu+tcp://admin:hunter2@kvm1/system", {"password": "s3cret"})
    assert isinstance(cfg.password, Secret)
    assert "s3cret" not in repr(cfg)
    assert redact(cfg.uris[0]) == "qemu+tcp://admin:***@kvm1/system"


def test_migration_address() -> None:
    assert migration_address("qemu+tcp://127.0.0.1:16601/system") == "127.0.0.1"
    assert migration_address("qemu+ssh://root@kvm2.example/system") == "kvm2.example"
    assert migration_address("qemu+tcp://[::1]:16601/system") == "::1"
    assert migration_address("qemu+unix:///system?socket=/s") is None
    assert migration_address("qemu:///system") is None
    assert migration_uri("::1") == "tcp://[::1]"
    assert migration_uri("10.1.0.2") == "tcp://10.1.0.2"


authority = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z]{1,5})?(:[1-9][0-9]{1,4})?", fullmatch=True)


@given(st.lists(authority, min_size=1, max_size=6, unique=True))
def test_every_authority_becomes_one_host(authorities: list[str]) -> None:
    cfg = parse(f"qemu+tcp://{','.join(authorities)}/system", {})
    assert cfg.uris == tuple(f"qemu+tcp://{a}/system" for a in authorities)


# ---- XML -------------------------------------------------------------------------------------

DOMAIN = """<domain type='qemu'>
  <name>web-1</name><uuid>6f1c2c1e-8d7b-4f7a-9a55-1d1f0f0c0a01</uuid>
  <memory unit='KiB'>262144</memory><vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-10.0'>hvm</type></os>
  <cpu mode='custom' match='exact' check='full'><model fallback='forbid'>qemu64</model></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/web.qcow2'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='/mnt/nfs/data.raw'/>
      <target dev='vdb' bus='virtio'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/>
      <target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdz'/><shareable/>
      <target dev='vdd' bus='virtio'/></disk>
    <hostdev mode='subsystem' type='pci'/>
  </devices>
</domain>"""


def test_domain_facts() -> None:
    f = domain_facts(DOMAIN, shared_paths=["/mnt/nfs"])
    assert (f.name, f.virt_type, f.arch, f.machine) == ("web-1", "qemu", "x86_64", "pc-i440fx-10.0")
    assert (f.memory, f.vcpus, f.hostdevs) == (256 * MiB, 2, 1)
    assert f.cpu_mode == "custom"
    assert f.cpu_xml is not None
    assert "qemu64" in f.cpu_xml
    by_target = {d.target: d for d in f.disks}
    assert set(by_target) == {"vda", "vdb", "vdc", "vdd"}  # the empty CD-ROM moves nothing
    assert not by_target["vda"].shared
    assert by_target["vdb"].why == "under shared path /mnt/nfs"
    assert by_target["vdc"].why == "network disk (rbd)"
    assert by_target["vdd"].why == "marked <shareable/>"
    assert [d.target for d in f.local_disks] == ["vda"]


def test_host_facts_and_emulator_release() -> None:
    caps = """<capabilities><host><uuid>895fcced-02e3-5f30-9d45-9272960ff8e2</uuid>
      <cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor>
      <feature name='avx2'/><feature name='x2apic'/></cpu></host></capabilities>"""
    h = host_facts(caps)
    assert (h.uuid[:8], h.arch, h.model, h.vendor) == ("895fcced", "x86_64", "EPYC", "AMD")
    assert h.features == {"avx2", "x2apic"}
    assert machine_version("<domainCapabilities><machine>pc-i440fx-10.0</machine>"
                           "</domainCapabilities>") == (10, 0)  # fmt: skip
    assert machine_version("<domainCapabilities><machine>pc-q35-7.2</machine>"
                           "</domainCapabilities>") == (7, 2)  # fmt: skip
    assert machine_version("<domainCapabilities><machine>pc</machine></domainCapabilities>") is None


# ---- statistics ------------------------------------------------------------------------------


def test_a_running_job_in_vmmove_units() -> None:
    s = sample(
        {
            "type": 2,
            "data_total": 256 * MiB,
            "data_processed": 189 * MiB,
            "data_remaining": 131 * MiB,
            "memory_bps": 33 * MiB,
            "memory_dirty_rate": 5635,
            "memory_page_size": 4096,
            "memory_iteration": 2,
            "downtime": 4122,
            "auto_converge_throttle": 30,
        }
    )
    assert s.dirty_rate == 5635 * 4096  # pages/s -> bytes/s
    assert (s.transfer_rate, s.iteration, s.expected_downtime_ms) == (33 * MiB, 2, 4122)
    assert s.throttle == 30
    assert s.started
    # libvirt reports the throttle only once auto-converge has throttled: 0 or absent is none
    assert sample({"type": 2, "auto_converge_throttle": 0}).throttle is None
    assert sample({"type": 2}).throttle is None


def test_the_first_pass_has_no_dirty_rate_yet() -> None:
    s = sample({"type": 2, "memory_dirty_rate": 0, "memory_iteration": 1, "data_total": 1})
    assert s.dirty_rate is None
    assert not sample({"type": 2, "data_total": 0, "memory_iteration": 0}).started


def test_a_dirty_rate_is_a_finished_calculation_no_older_than_asked() -> None:
    done = {
        "dirtyrate.calc_status": DIRTYRATE_MEASURED,
        "dirtyrate.calc_start_time": 1000,
        "dirtyrate.megabytes_per_second": 24,
    }
    assert dirty_rate(done) == 24 * MiB
    assert dirty_rate(done, since=1000.9) == 24 * MiB  # whole seconds: one of slack
    assert dirty_rate(done, since=1002) is None  # an older measurement than the one asked
    assert dirty_rate({**done, "dirtyrate.calc_status": DIRTYRATE_MEASURING}) is None
    assert dirty_rate({}) is None  # never measured (or libvirt < 7.2)


def test_figures_from_the_completed_job_or_the_last_sample() -> None:
    final = {"downtime": 125, "data_processed": 337 * MiB, "memory_iteration": 4}
    assert figures(final, None, 7.0, completed=True) == Figures(
        total_time=7.0, downtime_ms=125.0, data_sent=337 * MiB, iterations=4
    )
    last = sample({"data_processed": 40 * MiB, "memory_iteration": 1})
    assert figures({"type": 0}, last, 3.0, completed=False) == Figures(
        total_time=3.0, downtime_ms=None, data_sent=40 * MiB, iterations=1
    )


def test_nonzero_memory_is_what_the_last_migration_did_not_find_zero() -> None:
    # The testbed's idle guest, as libvirt 9.0 keeps its completed incoming migration.
    arrived = {"operation": 4, "memory_total": 268967936, "memory_constant": 32766,
               "memory_page_size": 4096}  # fmt: skip
    assert nonzero_memory(arrived) == 268967936 - 32766 * 4096
    assert nonzero_memory({**arrived, "operation": 5}) == 268967936 - 32766 * 4096
    assert nonzero_memory({**arrived, "memory_page_size": None}) == 268967936 - 32766 * 4096
    for other in ({**arrived, "operation": 7}, {"type": 0}, {**arrived, "memory_constant": -1}):
        assert nonzero_memory(other) is None  # a snapshot's job, no job, a broken counter
    assert nonzero_memory({**arrived, "memory_constant": 10**9}) == 0


def test_delta_ratio_is_what_a_compressed_resent_page_cost() -> None:
    """XBZRLE's counters as libvirt carries the source's to the destination (the cookie's
    statistics). QEMU counts every page found in its cache, an overflowed one at a whole
    page: 30,000 deltas of 1,400 bytes and 10,000 overflows are 40,000 pages."""
    arrived = {"operation": 4, "memory_page_size": 4096, "compression_pages": 40000,
               "compression_bytes": 30000 * 1400 + 10000 * 4096,
               "compression_overflow": 10000}  # fmt: skip
    assert delta_ratio(arrived) == pytest.approx((30000 * 1400 + 10000 * 4096) / 40000 / 4096)
    assert delta_ratio({**arrived, "memory_page_size": None}) == delta_ratio(arrived)
    assert delta_ratio({**arrived, "compression_bytes": 0}) == 0.001  # unchanged pages: cheap
    for other in (
        {"operation": 4, "memory_page_size": 4096},  # it did not compress
        {**arrived, "compression_pages": 100},  # too few pages to say
        {**arrived, "operation": 7},  # no migration's
        {**arrived, "compression_bytes": float("nan")},
    ):
        assert delta_ratio(other) is None


# ---- registration ----------------------------------------------------------------------------


def test_the_plugin_serves_qemu_transports_and_named_clusters() -> None:
    from vmmove.plugins import load_plugins

    backends = load_plugins(reload=True).backends
    for scheme in ("qemu", "qemu+tcp", "qemu+ssh", "libvirt"):
        spec = backends.get(scheme)
        assert spec.plugin == "libvirt"
        assert spec.capabilities is not None
        assert spec.capabilities.postcopy
        assert not spec.capabilities.reserve


def test_the_docs_options_table_is_the_declaration() -> None:
    from vmmove.options import markdown_table
    from vmmove.testing.docs import marked_block
    from vmmove_libvirt.config import OPTIONS

    page = Path(__file__).parents[3] / "docs" / "backends" / "libvirt.md"
    assert marked_block(page, "options-table") == markdown_table(OPTIONS)


def test_the_registered_options_are_parsed_by_the_core() -> None:
    from vmmove.plugins import load_plugins
    from vmmove_libvirt.config import OPTIONS, PASSTHROUGH

    for scheme in ("qemu", "libvirt"):
        spec = load_plugins(reload=True).backends.get(scheme)
        assert (spec.options, spec.passthrough) == (OPTIONS, PASSTHROUGH)
    with pytest.raises(InvalidInput, match="inventory"):
        spec.build("qemu:///system", {"inventory": "x"})  # the simulator's, refused here


def test_importing_the_plugin_does_not_import_libvirt() -> None:
    import subprocess
    import sys

    code = "import sys, vmmove_libvirt.plugin; print('libvirt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _pki(tmp_path: Path) -> str:
    for name in ("cacert.pem", "clientcert.pem", "clientkey.pem"):
        (tmp_path / name).write_text("x")
    return str(tmp_path)


def test_tls_dir_goes_to_the_client_not_to_the_peer(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    cfg = parse("qemu+tls://a,b:16514/system?tls_priority=NORMAL", {"tls_dir": pki + "/"})
    assert cfg.tls_dir == pki
    opened = client_uri(cfg.uris[1], cfg)
    assert opened == f"qemu+tls://b:16514/system?tls_priority=NORMAL&pkipath={pki}"
    assert peer_uri(opened) == "qemu+tls://b:16514/system?tls_priority=NORMAL"
    assert peer_uri(cfg.uris[0]) == cfg.uris[0]
    # plain qemu://host is TLS too; ssh is not touched
    assert "pkipath" in client_uri("qemu://a/system", cfg)
    assert client_uri("qemu+ssh://a/system", cfg) == "qemu+ssh://a/system"


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("qemu+tls://a/system?no_verify=1", {}, "insecure=True"),
        ("qemu://a/system?no_verify=yes", {}, "insecure=True"),
        ("qemu+ssh://a/system", {"insecure": True}, "TLS transports only"),
        ("qemu+tcp://a/system", {"tls_dir": "/"}, "TLS transports only"),
        ("qemu+tls://a/system", {"insecure": "maybe"}, "true or false"),
        ("qemu+tls://a/system", {"tls_dir": "relative"}, "absolute"),
        ("qemu+tls://a/system", {"tls_dir": "/nonexistent-vmmove"}, "lacks cacert.pem"),
    ],
)
def test_tls_options_are_checked(uri: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(uri, options)


def test_insecure_warns_and_turns_verification_off(tmp_path: Path) -> None:
    with pytest.warns(InsecureConnectionWarning, match="qemu\\+tls://a/system"):
        cfg = parse("qemu+tls://a/system", {"insecure": True, "tls_dir": _pki(tmp_path)})
    assert client_uri(cfg.uris[0], cfg).endswith("&no_verify=1")
    assert "no_verify" not in peer_uri(client_uri(cfg.uris[0], cfg))


def test_the_xbzrle_cache_is_a_power_of_two_within_the_guest() -> None:
    """QEMU refuses a cache that is not a power of two, or larger than the guest's RAM."""
    from vmmove_libvirt.backend import XBZRLE_CACHE_MAX, xbzrle_cache

    assert xbzrle_cache(256 * MiB) == 256 * MiB
    assert xbzrle_cache(768 * MiB) == 512 * MiB
    assert xbzrle_cache(1000 * MiB) == 512 * MiB
    assert xbzrle_cache(64 << 30) == XBZRLE_CACHE_MAX == 1 << 30
    assert xbzrle_cache(1) == 4096

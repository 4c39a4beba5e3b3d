"""The contract kit judges the backend itself: three broken toy backends must fail it, each
with the rule it broke named, and the honest simulator must pass the same tests."""

from __future__ import annotations

import pytest

# Loaded here, before pytester snapshots sys.modules: an in-process run drops the modules
# it imported itself, and a second run would then see two copies of the clock classes.
import vmmove.engine
import vmmove.sim
import vmmove.testing.contract  # noqa: F401

TOYS = '''
from __future__ import annotations

import dataclasses
import itertools
import time

import pytest

import vmmove
from vmmove import Phase
from vmmove.plugins import load_plugins
from vmmove.sim import SimBackend
from vmmove.testing.contract import BackendContract, ContractSetup


class PhasesBackwards(SimBackend):
    """Reports 'setup' (requesting) once after it reported pre-copy."""

    precopy = itertools.count()

    def poll(self, job):
        status = super().poll(job)
        if status.phase is Phase.TRANSFERRING and next(self.precopy) == 1:
            return dataclasses.replace(status, phase=Phase.REQUESTING, native="setup")
        return status


class ProgressDown(SimBackend):
    """Reports bytes sent going down once (a counter reset on the platform, say)."""

    polls = itertools.count()

    def poll(self, job):
        status = super().poll(job)
        if status.data_processed and next(self.polls) == 1:
            return dataclasses.replace(status, data_processed=status.data_processed // 3)
        return status


class AbortIgnored(SimBackend):
    """Accepts abort() and does nothing: the job runs on to completion."""

    def abort(self, job):
        pass


class SlowPoll(SimBackend):
    """One poll blocks well past the poll interval (a platform call made inline)."""

    poll_interval = 0.02
    polls = itertools.count()

    def poll(self, job):
        if next(self.polls) == 3:
            time.sleep(0.2)  # the behaviour under test, not a wait for anything
        return super().poll(job)


class Honest(SimBackend):
    pass


def _setup(backend_class):
    backend = backend_class()
    conn = vmmove.Connection(backend, uri="sim://", plugins=load_plugins())
    return ContractSetup(connection=conn, running_vm="web-1", target="host-b", slow_vm="db-1")


class TestPhasesBackwards(BackendContract):
    @pytest.fixture
    def contract_setup(self):
        yield _setup(PhasesBackwards)


class TestProgressDown(BackendContract):
    @pytest.fixture
    def contract_setup(self):
        yield _setup(ProgressDown)


class TestAbortIgnored(BackendContract):
    @pytest.fixture
    def contract_setup(self):
        yield _setup(AbortIgnored)


class TestSlowPoll(BackendContract):
    @pytest.fixture
    def contract_setup(self):
        yield _setup(SlowPoll)


class TestHonest(BackendContract):
    @pytest.fixture
    def contract_setup(self):
        yield _setup(Honest)
'''

CASES = [
    ("TestPhasesBackwards", "test_live_migration", "phases never go backwards"),
    ("TestProgressDown", "test_live_migration", "the backend's own progress never falls"),
    ("TestSlowPoll", "test_live_migration", "poll answers at once"),
    (
        "TestAbortIgnored",
        "test_cancel_before_commit_leaves_vm_on_source",
        "backend ignored abort; the job completed",
    ),
]


@pytest.mark.parametrize(("toy", "test", "rule"), CASES)
def test_the_kit_fails_a_broken_backend_naming_the_rule(
    pytester: pytest.Pytester, toy: str, test: str, rule: str
) -> None:
    pytester.makepyfile(test_toys=TOYS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"test_toys.py::{toy}::{test}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ContractViolation: the backend broke the contract:*", f"*- {rule}*"]
    )


@pytest.mark.parametrize("test", sorted({t for _, t, _ in CASES}))
def test_the_honest_simulator_passes_the_same_tests(pytester: pytest.Pytester, test: str) -> None:
    pytester.makepyfile(test_toys=TOYS)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"test_toys.py::TestHonest::{test}"
    )
    result.assert_outcomes(passed=1)

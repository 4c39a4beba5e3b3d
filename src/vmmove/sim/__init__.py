"""The built-in simulated hypervisor (``sim://``): the embedded default backend."""

from vmmove.sim.backend import SimBackend
from vmmove.sim.faults import Fault
from vmmove.sim.inventory import SimInventory, load, parse, sample

__all__ = ["Fault", "SimBackend", "SimInventory", "load", "parse", "sample"]

"""Anaconda parses with pykickstart's development version (DEVEL)."""
from pykickstart.version import DEVEL as VERSION

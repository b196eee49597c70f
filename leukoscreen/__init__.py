"""LeukoScreen: screening aid for leukemia in blood smears, from desktop training to an edge device.

Research use only. Not for use in diagnostic procedures.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leukoscreen")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

RESEARCH_USE_NOTICE = "Research use only. Not for use in diagnostic procedures."

"""LeukoScreen: screening aid for leukemia in blood smears, from desktop training to an edge device.

Research use only. Not for use in diagnostic procedures.
"""
# The one place the version is written (pyproject.toml reads it); a plain string rather than a look-up in the
# installed metadata, which would cost every device process about 3.5 MB of memory.
__version__ = "0.1.0"

RESEARCH_USE_NOTICE = "Research use only. Not for use in diagnostic procedures."

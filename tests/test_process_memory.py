"""The device process gives freed memory back to the system (glibc's malloc otherwise keeps it)."""
import subprocess
import sys

import pytest

PROGRAM = """
import sys, numpy as np
from leukoscreen.edge.process_memory import return_freed_memory
if sys.argv[1] == "fixed" and not return_freed_memory():
    sys.exit("mallopt refused")
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) / 1024
before = anon()
for _ in range(3):
    field = np.ones(8 << 20, np.uint8); del field          # one large block, freed
    parts = [np.ones(1 << 20, np.uint8) for _ in range(8)]; del parts
print(anon() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc and glibc's mallopt")
def test_freed_blocks_are_returned_with_fixed_malloc_thresholds():
    held = {mode: float(subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "fixed")}
    assert held["default"] >= 6, held   # glibc's default: the 8 MB are kept in the heap for reuse
    assert held["fixed"] <= 1, held     # fixed thresholds: given back on free


def test_serve_fixes_the_thresholds_before_anything_allocates():
    import inspect

    from leukoscreen import cli
    source = inspect.getsource(cli._serve)
    assert source.index("return_freed_memory()") < source.index("from leukoscreen.edge.daemon import")

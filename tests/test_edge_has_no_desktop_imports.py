"""The device side must run where tensorflow, keras and scikit-learn are not installed."""
import pkgutil
import subprocess
import sys

import leukoscreen.edge

from conftest import BLOCK_DESKTOP_IMPORTS

IMPORT_ALL = """
import importlib
for module in MODULES:
    importlib.import_module(module)
print('ok', len(MODULES))
"""


def test_every_edge_module_imports_without_tensorflow():
    modules = ["leukoscreen.edge"] + [m.name for m in pkgutil.walk_packages(leukoscreen.edge.__path__,
                                                                             "leukoscreen.edge.")]
    assert len(modules) > 2
    result = subprocess.run([sys.executable, "-c", f"MODULES = {modules!r}\n{BLOCK_DESKTOP_IMPORTS}{IMPORT_ALL}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(modules)}"

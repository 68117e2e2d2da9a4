"""Every lit_rlhf module imports on its own, whichever a user imports first (no circular imports)."""

import subprocess
import sys

# One interpreter: third-party packages stay loaded, and before each module every ``lit_rlhf`` module is dropped
# from ``sys.modules``, so each import starts the package from scratch as a fresh ``python -c "import X"`` would.
CODE = """
import importlib, pkgutil, sys, traceback
import lit_rlhf
names = [m.name for m in pkgutil.walk_packages(lit_rlhf.__path__, "lit_rlhf.")]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "lit_rlhf" or m.startswith("lit_rlhf.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_first():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    count, *failed = out.stdout.strip().splitlines()
    assert int(count) > 30
    assert failed == []

import subprocess
import sys


def test_functional_does_not_import_lightning():
    code = "import sys, lit_rlhf.functional; print('lightning' in sys.modules or 'lightning.pytorch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

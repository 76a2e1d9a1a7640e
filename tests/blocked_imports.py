"""Run the x2i CLI as on an install without some extras: the named top-level modules cannot be imported
(a `sys.meta_path` finder raises ModuleNotFoundError for them, as Python does for a module that is not there)."""
import subprocess
import sys

from x2i.core.extras import EXTRAS

BLOCKED_CLI = """
import sys
blocked = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["x2i", *sys.argv[2:]]
from x2i.cli.main import main
main()
"""

# Every module an extra brings (and imagehash, which x2i no longer needs): what `pip install -e .` lacks.
OPTIONAL_MODULES = sorted({m for modules in EXTRAS.values() for m in modules} | {"imagehash"})


def run_without(modules, *args, cwd):
    return subprocess.run([sys.executable, "-c", BLOCKED_CLI, ",".join(modules), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)



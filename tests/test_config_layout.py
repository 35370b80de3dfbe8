"""Only ``scd_core/config.py`` reads the environment: an AST scan of the engine, the pages and ``app.py``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "scd_core/config.py"
ENV_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})
# Writes a worker process must do before it imports torch (they configure a library, they read nothing).
ALLOWED_WRITES = {("scd_core/runtime/executors.py", "OMP_NUM_THREADS")}


def _modules() -> list[Path]:
    return sorted([*(ROOT / "scd_core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"])


def environment_uses(source: str, relpath: str) -> list[str]:
    """``line: code`` of every use of ``os.environ``/``os.getenv``/... in ``source``, allowed writes excepted."""
    tree = ast.parse(source)
    allowed: set[int] = set()
    for node in ast.walk(tree):  # os.environ["NAME"] = ... with (relpath, NAME) allowed
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                and isinstance(node.slice, ast.Constant) and (relpath, node.slice.value) in ALLOWED_WRITES):
            allowed.add(id(node.value))
    attributes = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ENV_NAMES]
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "os"
               and any(a.name in ENV_NAMES for a in n.names)]
    found = sorted([n for n in attributes if id(n) not in allowed] + imports, key=lambda n: n.lineno)
    lines = source.splitlines()
    return [f"{relpath}:{n.lineno}: {lines[n.lineno - 1].strip()}" for n in found]


def test_the_scan_finds_environment_reads():
    sample = ('import os\nfrom os import getenv\na = os.environ.get("SCD_X")\nb = os.getenv("Y")\n'
              'os.environ["OMP_NUM_THREADS"] = "1"\nos.environ["OTHER"] = "1"\n')
    assert [u.split(":")[1] for u in environment_uses(sample, "scd_core/runtime/executors.py")] == ["2", "3", "4", "6"]
    assert len(environment_uses(sample, "scd_core/elsewhere.py")) == 5  # the allowed write is allowed by file


def test_environment_read_only_in_config():
    uses = []
    for path in _modules():
        relpath = path.relative_to(ROOT).as_posix()
        if relpath != CONFIG:
            uses += environment_uses(path.read_text(encoding="utf-8"), relpath)
    assert not uses, "read settings through scd_core.config.settings():\n" + "\n".join(uses)
    assert environment_uses((ROOT / CONFIG).read_text(encoding="utf-8"), CONFIG)  # the scan does see config.py

"""An earlier version of a library module, loaded from git history, for benchmarks that compare the
current code with the one it replaced."""
from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_old_module(commit: str, path: str) -> ModuleType:
    """`git show <commit>:<path>` as a module of its own (its imports resolve against today's package)."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{Path(path).stem}_{commit}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

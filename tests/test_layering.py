"""sskd_ray's packages form layers: a module imports only from its own package or from lower layers,
at the top of the file (an import tucked inside a function hides the structure). Parsed, not run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sskd_ray"
# bottom to top; a unit is a subpackage or a top-level module. Units of one layer do not import each other.
LAYERS = (
    {"redaction"}, {"storage"}, {"config"}, {"tracking_journal"}, {"tracking", "ray_setup"},
    {"data"}, {"models"}, {"losses", "eval"}, {"label"}, {"deploy", "train"}, {"tune"},
)
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """'sskd_ray.models.checkpoint' -> 'models'; 'sskd_ray.config' -> 'config'."""
    return module.split(".")[1]


def package_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported sskd_ray module, line, at the top of the file) for each import in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sskd_ray"):
            names = [node.module] if node.module != "sskd_ray" else [f"sskd_ray.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("sskd_ray.")]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names if name.count(".") >= 1]
    return found


def layering_problems(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2:
            continue  # sskd_ray/__init__.py
        unit = parts[1]
        if unit not in RANK:
            problems.append(f"{path.relative_to(root.parent)}: {unit} is in no layer of tests/test_layering.py")
            continue
        for name, line, at_top in package_imports(path):
            other = unit_of(name)
            where = f"{path.relative_to(root.parent)}:{line} imports {name}"
            if other == unit:
                continue
            if other not in RANK:
                problems.append(f"{where}: {other} is in no layer")
            elif RANK[other] > RANK[unit]:
                problems.append(f"{where}: upward ({unit} is layer {RANK[unit]}, {other} layer {RANK[other]})")
            elif RANK[other] == RANK[unit]:
                problems.append(f"{where}: sideways ({unit} and {other} share layer {RANK[unit]})")
            elif not at_top:
                problems.append(f"{where}: inside a function (import it at the top of the file)")
    return problems


def test_packages_import_only_downward_and_at_the_top():
    assert layering_problems() == []


@pytest.mark.parametrize("source, problem", [
    ("from sskd_ray.deploy.export import export_model\n", "upward"),  # eval -> deploy
    ("from sskd_ray.losses.set_loss import set_loss\n", "sideways"),  # eval -> losses, the same layer
    ("def f():\n    from sskd_ray.models.checkpoint import load_trained\n", "inside a function"),
])
def test_the_rule_catches_each_kind_of_bad_import(tmp_path, source, problem):
    package = tmp_path / "sskd_ray"
    (package / "eval").mkdir(parents=True)
    (package / "eval" / "report.py").write_text("from sskd_ray.models.pretrained import Student\n" + source)
    problems = layering_problems(package)
    assert len(problems) == 1 and problem in problems[0], problems

"""The layers of longrec import one way (README, "Architecture"): a lower layer never reaches up."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "longrec"

# Each package (or top-level module) and the longrec packages it may import. Lowest layers first.
ALLOWED = {
    "seeding": set(),
    "runtime": set(),
    "model_files": set(),
    "data": {"seeding"},
    "kernels": set(),
    "memory": {"kernels"},
    "models": {"data", "kernels", "memory", "model_files"},
    "features": {"data"},
    "validation": {"data"},
    "eval": {"data", "models", "model_files"},
    "train": {"data", "models", "eval", "kernels", "model_files", "runtime", "seeding"},
    "registry": {"model_files"},
    "serving": {"data", "models", "eval", "features", "kernels", "memory", "registry", "model_files", "rollout"},
    "rollout": {"data", "registry", "model_files"},
    "experiments": {"data", "models", "train", "eval", "seeding"},
    "pipeline": {
        "data",
        "models",
        "eval",
        "train",
        "validation",
        "features",
        "registry",
        "model_files",
        "serving",
        "rollout",
    },
    "cli": {"data", "eval", "experiments", "pipeline", "registry", "rollout", "serving", "train", "models"},
    "longrec": set(),
}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        layer = parts[0].removesuffix(".py") if parts[0] != "__init__.py" else "longrec"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("longrec."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("longrec.")]
            for name in names:
                target = name.split(".")[1]
                if target != layer:
                    found.setdefault(layer, set()).add(target)
    return found


def test_every_layer_imports_only_what_it_may():
    imports = _imports()
    assert set(imports) <= set(ALLOWED), f"new layer(s) {set(imports) - set(ALLOWED)}: add them to ALLOWED"
    wrong = {
        layer: sorted(targets - ALLOWED[layer])
        for layer, targets in imports.items()
        if targets - ALLOWED[layer]
    }
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_lowest_layers_import_nothing_above_them():
    imports = _imports()
    for layer in ("model_files", "seeding", "runtime", "kernels"):
        assert not imports.get(layer), (layer, imports.get(layer))
    assert "train" not in imports.get("eval", set()) and "registry" not in imports.get("eval", set())

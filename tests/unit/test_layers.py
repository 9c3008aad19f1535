"""DESIGN.md's import direction: flows -> tasks -> (features, models); pure layers stay pure."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _top(module: str) -> str:
    """`recsys.models.x` counts as the layer `models` (the package's own layers live under `recsys.`)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "recsys" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {_top(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(_top(node.module))
            if node.module == "recsys":  # from recsys import models
                names |= {a.name for a in node.names}
    return names


def test_pure_layers_do_not_import_orchestration_or_tracking():
    allowed_mlflow = {"pyfunc.py", "pyfunc_model.py"}
    for layer in ("features", "models"):
        for path in (ROOT / layer).glob("*.py"):
            bad = _imports(path) & {"prefect", "flows", "tasks", "serving"}
            if path.name not in allowed_mlflow:
                bad |= _imports(path) & {"mlflow"}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    for path in (ROOT / "features").glob("*.py"):
        assert "models" not in _imports(path), f"{path.name}: features must not depend on models"


def test_tasks_do_not_import_flows_and_flows_do_no_mlflow():
    for path in (ROOT / "tasks").glob("*.py"):
        assert "flows" not in _imports(path), path.name
    for path in (ROOT / "flows").glob("*.py"):
        assert not _imports(path) & {"mlflow", "pandas"}, path.name


def test_no_python_in_the_mlflow_config_folder():
    assert not list((ROOT / "mlflow").glob("*.py")), "mlflow/ must not shadow the mlflow package"

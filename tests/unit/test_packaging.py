"""The distribution: every import maps to a declared dependency, the lock agrees with the ranges, the wheel
installs one import package (`recsys`) and a user's own `models`/`tasks` package keeps working next to it."""

import ast
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder of the checkout
LAYERS = sorted(name.split(".", 1)[1] for name in PACKAGE_DIRS if "." in name)
# documented in pyproject.toml as not in requirements.lock (installed on demand)
UNLOCKED_EXTRAS = {"gpu", "serve-fast", "semantic"}
# import name -> distribution for optional extras that are usually not installed (so no metadata to ask)
NOT_INSTALLED = {"rmm": "rmm-cu13"}


def _requirements(*extras: str, core: bool = True) -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]] if core else []
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _imports(path: Path) -> dict[str, int]:
    """Top-level names of absolute imports -> first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def _python_files(folders) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _undeclared(files: list[Path], declared: set[str]) -> list[str]:
    dists_of = packages_distributions()
    first_party = {"recsys", "tests"}
    problems = []
    for path in files:
        for name, line in _imports(path).items():
            if name in sys.stdlib_module_names or name in first_party:
                continue
            dists = {canonicalize_name(d) for d in dists_of.get(name, [NOT_INSTALLED.get(name, name)])}
            if not dists & declared:
                where = f"{path.relative_to(ROOT)}:{line}"
                problems.append(f"{where}: imports {name!r} (distribution {sorted(dists)}), "
                                f"not declared in pyproject.toml")
    return problems


def test_every_import_of_the_package_is_a_declared_dependency():
    extras = [e for e in PYPROJECT["project"]["optional-dependencies"] if e != "test"]
    declared = {canonicalize_name(r.name) for r in _requirements(*extras)}
    files = _python_files(PACKAGE_DIRS.values())
    assert len(files) > 40, files  # the package's modules were found
    problems = _undeclared(files, declared)
    assert not problems, "\n".join(problems)


def test_every_import_of_the_tests_is_declared_with_the_test_extra():
    declared = {canonicalize_name(r.name) for r in _requirements(*PYPROJECT["project"]["optional-dependencies"])}
    problems = _undeclared(_python_files(["tests"]), declared)
    assert not problems, "\n".join(problems)


def test_the_package_imports_its_own_layers_only_under_recsys():
    """`from models.x import y` works in a checkout but not in the wheel (no top-level `models` there)."""
    bare = [f"{p.relative_to(ROOT)}:{line}: imports {name!r}, not 'recsys.{name}'"
            for p in _python_files([*PACKAGE_DIRS.values(), "tests", "bench"])
            for name, line in _imports(p).items() if name in LAYERS]
    assert not bare, "\n".join(bare)


def test_the_lock_satisfies_the_ranges():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version.strip()
    extras = [e for e in PYPROJECT["project"]["optional-dependencies"] if e not in UNLOCKED_EXTRAS]
    problems = []
    for req in _requirements(*extras):
        version = lock.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req}: not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: requirements.lock has {version}")
    for req in _requirements(*UNLOCKED_EXTRAS, core=False):  # optional extras: checked when locked
        version = lock.get(canonicalize_name(req.name))
        if version is not None and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: requirements.lock has {version}")
    assert not problems, "\n".join(problems)


def test_the_distribution_installs_one_import_package():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert {p.split(".")[0] for p in setuptools["packages"]} == {"recsys"}
    assert set(setuptools["packages"]) == set(PACKAGE_DIRS)
    assert PYPROJECT["project"]["scripts"] == {"recsys": "recsys.flows.cli:main"}
    for name, folder in PACKAGE_DIRS.items():
        assert (ROOT / folder / "__init__.py").is_file(), f"{name} -> {folder}/ has no __init__.py"


def test_a_users_own_models_and_tasks_packages_keep_working(tmp_path):
    """The installed package (editable here; the wheel in tests/integration/test_wheel.py) next to a user's
    project with packages named `models` and `tasks`, imported from that project's folder."""
    for pkg in ("models", "tasks"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"OWNER = 'user'\nNAME = {pkg!r}\n")
    code = ("import models, tasks; "
            "from recsys.models.two_stage import TwoStageRecommender; "
            "from recsys.tasks.paths import data_dir; import recsys.flows.cli; "
            "import recsys.models as rm; "
            "assert (models.OWNER, tasks.OWNER) == ('user', 'user'), (models.__file__, tasks.__file__); "
            "assert not hasattr(rm, 'OWNER'); "
            "import sys; print(sys.modules['models'].__file__, sys.modules['recsys.models'].__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    user_models, recsys_models = proc.stdout.split()
    assert Path(user_models) == tmp_path / "models" / "__init__.py"
    assert Path(recsys_models).parent.name == "models" and tmp_path not in Path(recsys_models).parents

"""recsys: the one import package this project installs (`recsys.features`, `recsys.models`, `recsys.tasks`,
`recsys.flows`, `recsys.serving`), so that a user's own `models` or `tasks` package keeps working next to it.

The subpackages stay where the project is laid out (the top-level folders of the checkout); pyproject.toml
maps them under this namespace (`[tool.setuptools.package-dir]`) for the wheel and the editable install.
Run from a checkout without an install (PYTHONPATH=<checkout>), `recsys/` is found first and the line below
lets it reach those folders; in an installed wheel the subpackages sit next to this file and it does nothing.
"""

from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "models" / "two_stage.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own search path

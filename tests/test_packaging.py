"""The wheel holds the whole package: every package directory is listed in pyproject.toml, and every
package-data pattern matches a file (a pattern that matches nothing hides a file a wheel was meant to ship)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs() -> dict[str, Path]:
    roots = {"sparseformer": ROOT / "sparseformer", **{k: ROOT / v for k, v in SETUPTOOLS["package-dir"].items()}}
    found = {}
    for prefix, base in roots.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if "__pycache__" not in rel:
                found[".".join([prefix, *rel])] = init.parent
    return found


def test_every_package_directory_is_listed():
    dirs = _package_dirs()
    assert "sparseformer.kernels.topk" in dirs and "sparseformer.cli" in dirs
    missing = sorted(set(dirs) - set(SETUPTOOLS["packages"]))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(set(SETUPTOOLS["packages"]) - set(dirs))
    assert not stale, f"listed in pyproject.toml but not a package directory: {stale}"


def test_package_data_patterns_match_files():
    dirs = _package_dirs()
    for pkg, patterns in SETUPTOOLS.get("package-data", {}).items():
        for pattern in patterns:
            assert list(dirs[pkg].glob(pattern)), f"package-data {pkg}: {pattern!r} matches no file"

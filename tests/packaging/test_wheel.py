"""The wheel installs cleanly beside the PyPI distributions `node`, `proto` and
`consensus`: `pip wheel . --no-deps`, a fresh virtual environment (no system
site-packages), the wheel and those three installed into it, then, from a
directory outside the repository, `medkv --help`, a server-side command
(`medkv tokens ...` runs `python -m medkv.node`), every medkv module imported,
a client built, and `import node` / `import proto` still the PyPI ones.

Why: `pip install medkv` used to install top-level packages named client,
node, proto and consensus, so installing it beside those distributions broke
one or the other. build_backend/medkv_build.py moves them under `medkv`.

Dependencies come from pip's usual index and cache (the shared venv's pip
config); the three PyPI distributions are installed with --no-deps: only
their files on disk matter here. Bounded: every step has a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NEIGHBOURS = ("node==2.0.0", "proto==0.1.0", "consensus==1.2.3")

CHECK = r"""
import importlib, importlib.util, pkgutil, sys
import medkv
from medkv.client import Client, TlsConfig, ops
from medkv.client.cli import NODE_PACKAGE
assert NODE_PACKAGE == "medkv.node", NODE_PACKAGE
failed = []
for pkg in ("client", "node", "proto", "consensus"):
    base = importlib.import_module(f"medkv.{pkg}")
    for info in pkgutil.walk_packages(base.__path__, f"medkv.{pkg}."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            failed.append(f"{info.name}: {type(e).__name__}: {e}")
assert not failed, failed
with Client("127.0.0.1:1", tls=None, token=None, timeout=1) as kv:
    pass
import node, proto, proto.errors  # the PyPI ones (node: a namespace package)
where = [*node.__path__, *proto.__path__]
assert all("/site-packages/medkv" not in p for p in where), where
assert importlib.util.find_spec("node.base") is not None  # PyPI node's files are intact
bare = [m for m in sys.modules if m.split(".")[0] in ("client", "jepsen_like")]
assert not bare, bare
print("ok", medkv.__file__)
"""


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDKV_TOKEN")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installs_beside_node_proto_consensus(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist")],
        cwd=outside)
    wheel = next((tmp_path / "dist").glob("medkv-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
        entry = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert tops == {"medkv", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert "medkv = medkv.client.cli:main" in entry

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=outside)
    py = venv / "bin" / "python"
    cfg = run([str(py), "-c", "import sys; print(sys.flags.no_site, sys.prefix != sys.base_prefix)"],
              cwd=outside)
    assert cfg.stdout.split() == ["0", "True"]
    run([str(py), "-m", "pip", "install", "--no-deps", *NEIGHBOURS], cwd=outside)
    run([str(py), "-m", "pip", "install", str(wheel)], cwd=outside, timeout=600)
    listed = run([str(py), "-m", "pip", "list", "--format", "freeze"], cwd=outside).stdout.lower()
    for dist in ("medkv==0.1.0", *NEIGHBOURS):
        assert dist in listed, listed

    medkv = venv / "bin" / "medkv"
    helped = run([str(medkv), "--help"], cwd=outside)
    assert "usage: medkv" in helped.stdout and "status" in helped.stdout
    keys = run([str(medkv), "tokens", "keygen", "--dir", "auth"], cwd=outside)
    assert (outside / "auth" / "jwks.json").is_file(), keys.stderr
    checked = run([str(py), "-c", CHECK], cwd=outside)
    assert checked.stdout.startswith("ok " + str(venv)), checked.stdout


def test_editable_install_keeps_the_repository_names(tmp_path: Path) -> None:
    """What scripts/_venv.sh does for development: plain setuptools, top-level names."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-e", str(ROOT)], cwd=tmp_path)
    found = run([str(venv / "bin" / "python"), "-c",
                 "import importlib.util as u; print(u.find_spec('client').origin)"], cwd=tmp_path)
    assert found.stdout.strip() == str(ROOT / "client" / "__init__.py")

"""Packaging: sdist and wheel build, `twine check` passes, the wheel installs and its `sod` command runs.

Slow (a build and a virtual environment): run with `pytest -m slow tests/test_packaging.py`.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs `pip install build twine`")
def test_build_check_install_and_run_the_wheel(tmp_path):
    dist = tmp_path / "dist"
    # --no-isolation: build with the setuptools already installed (works offline)
    _run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(dist), str(ROOT)])
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    if importlib.util.find_spec("twine") is not None:
        assert "PASSED" in _run([sys.executable, "-m", "twine", "check", *map(str, wheels + sdists)])

    names = zipfile.ZipFile(wheels[0]).namelist()
    for module in ("sod_trainer/cli.py", "sod_trainer/scripts/train.py", "sod_trainer/data.py",
                   "sod_trainer/trainer.py", "sod_trainer/py.typed", "sod_trainer/viewer/assets/viewer.js",
                   "sod_trainer/viewer/assets/viewer.css"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sod = sod_trainer.cli:main" in zipfile.ZipFile(wheels[0]).read(entry_points).decode()

    # A fresh environment with only the wheel installed; its dependencies come from this environment's
    # site-packages through a .pth file, so the test needs no network.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    dependencies = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--prefix", str(venv),
          str(wheels[0])], env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([str(python), "-c", "import sod_trainer; print(sod_trainer.__file__)"], env=env, cwd=tmp_path)
    assert str(venv) in where  # the installed copy, not the checkout
    # the console script, run by the new environment's interpreter (pip wrote this interpreter's shebang)
    sod = [str(python), str(bin_dir / "sod")]
    assert "train" in _run([*sod, "--help"], env=env, cwd=tmp_path)
    out = _run([*sod, "env"], env=env, cwd=tmp_path)
    from sod_trainer import __version__

    assert "sod-trainer" in out and __version__ in out and "(not installed" not in out
    assert "--step_weighting" in _run([*sod, "train", "--help"], env=env, cwd=tmp_path)

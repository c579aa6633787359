"""The package installs as a plain wheel with adapters/ mapped to dsxai.adapters."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("dsxai-*.whl")
    return path


def test_wheel_maps_adapters_into_dsxai(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "dsxai/adapters/__init__.py" in names
    assert not any(n.startswith("adapters/") for n in names)  # no stray top-level package
    from dsxai.cli import COMMANDS

    assert all(f"dsxai/commands/{name}.py" in names for name in COMMANDS), sorted(names)
    assert {"dsxai/bench/__init__.py", "dsxai/bench/run.py"} <= set(names)  # subpackages are listed by hand
    shipped = [n for n in names if n.startswith("dsxai/zoo/weights/")]
    source = Path(__file__).resolve().parents[1] / "dsxai" / "zoo" / "weights"
    assert sorted(n.rsplit("/", 1)[1] for n in shipped) == sorted(p.name for p in source.glob("*.pt"))


def test_import_dsxai_adapters_from_an_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    probe = "import dsxai, dsxai.adapters; print(dsxai.__file__); print(dsxai.adapters.__file__)"
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    core, adapters = run.stdout.split()
    assert Path(core).is_relative_to(site) and Path(adapters).is_relative_to(site)
    assert Path(adapters).parent.name == "adapters" and Path(adapters).parent.parent.name == "dsxai"


def test_console_script_reports_the_version():
    from dsxai import __version__
    run = subprocess.run([sys.executable, "-m", "dsxai", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"dsxai {__version__}"

"""A non-editable install (pip install .) into a fresh venv exposes all four packages."""

import pathlib
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_maps_golden_kernels_stages(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # The fresh venv sees this interpreter's torch/triton/numpy through a .pth file, so that only the
    # project itself is installed (an unpinned torch would download CUDA packages). The isolated build
    # fetches setuptools from the package index, so this test needs one (CI has it).
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
    pathlib.Path(site.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    code = (
        "import mhc_ops, mhc_ops.golden, mhc_ops.kernels, mhc_ops.stages, pathlib;"
        "root = pathlib.Path(mhc_ops.__file__).parent;"
        "assert pathlib.Path(mhc_ops.golden.__file__).parent == root / 'golden', mhc_ops.golden.__file__;"
        "assert 'site-packages' in str(root), root;"
        "print('ok')"
    )
    out = subprocess.run([py, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert sys.executable != str(py)

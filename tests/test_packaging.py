"""Packaging: a non-editable install (pip install .) into a fresh venv exposes all four packages, and the
test extra brings everything the suite imports."""

import ast
import importlib.metadata
import pathlib
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIRST_PARTY = {"mhc_ops", "golden", "kernels", "stages", "tests", "benchmarks"}
FIRST_PARTY_DIRS = ("mhc_ops", "golden", "kernels", "stages")


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


def _pyproject_requirements(extras):
    """The requirements of the project with these extras (an extra naming the project itself expanded)."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs, todo, seen = [], list(extras), set()
    reqs += [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, project["optional-dependencies"][extra]):
            if r.name == project["name"]:
                todo += r.extras
            else:
                reqs.append(r)
    return reqs


def _installed_closure(reqs) -> set[str]:
    """Normalised names of the distributions these requirements bring in, transitively (this venv's)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names, todo = set(), list(reqs)
    while todo:
        r = todo.pop()
        name = canonicalize_name(r.name)
        if name in names or (r.marker is not None and not r.marker.evaluate({"extra": ""})):
            continue
        names.add(name)
        todo += [Requirement(s) for s in importlib.metadata.requires(r.name) or ()]
    return names


def _third_party_imports(paths) -> set[str]:
    """Top-level modules imported (absolute imports) by these files, less the standard library."""
    mods = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - FIRST_PARTY


def test_test_extra_brings_every_module_the_suite_imports():
    # nox -s tests installs only `.[test]` (and the CPU torch wheel): a module a test, a benchmark it
    # runs or the package imports must come with that, or a plain install could not run the suite.
    from packaging.utils import canonicalize_name

    files = [p for d in ("tests", "benchmarks", *FIRST_PARTY_DIRS) for p in (ROOT / d).rglob("*.py")]
    closure = _installed_closure(_pyproject_requirements(["test"]))
    dists = importlib.metadata.packages_distributions()
    missing = {
        mod: dists.get(mod)
        for mod in _third_party_imports(files)
        if not any(canonicalize_name(d) in closure for d in dists.get(mod, ()))
    }
    assert not missing, f"imported but not brought by pyproject's test extra: {missing}"


def test_the_checkout_is_not_a_path_rewrite():
    """mhc_ops maps golden/, kernels/ and stages/ by packaging alone: from the clone's root (where a
    path rewrite would expose every top-level folder), mhc_ops has one package folder and neither
    mhc_ops.tests nor mhc_ops.benchmarks imports."""
    code = (
        "import importlib, mhc_ops, mhc_ops.golden;"
        "assert len(mhc_ops.__path__) == 1, mhc_ops.__path__;"
        "bad = [m for m in ('mhc_ops.tests', 'mhc_ops.benchmarks', 'mhc_ops.noxfile')"
        " if importlib.util.find_spec(m) is not None];"
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr

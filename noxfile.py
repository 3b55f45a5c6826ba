"""Sessions: tests (CI), compile_check (CI), train (the main job), test_stage -- NAME, bugs, lint, fixtures,
diagnose, bench;
hf [-- VERSION ...] (the Hugging Face integrations on other transformers releases)."""

import pathlib
import re
import runpy

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# torch 2.13.0 is a local CPU wheel (an unpinned torch downloads gigabytes of CUDA packages). It is the
# only pin here: everything else comes from pyproject.toml, so a session gets what
# `pip install torch==2.13.0 -e ".[test]"` gives a user (the newest Triton and numpy pip picks).
CPU_TORCH = "torch==2.13.0"
# Triton kernels run on CPU tensors through the interpreter; a GPU machine runs them compiled.
INTERPRET = {"TRITON_INTERPRET": "1"}


def _install(session: nox.Session, extras: str | None = "test") -> None:
    """The project and its dependencies as a user installs them (extras: the pyproject extras, None for
    none); eager upgrades, so a reused venv resolves as a fresh one does."""
    target = f".[{extras}]" if extras else "."
    session.install("--upgrade", "--upgrade-strategy", "eager", CPU_TORCH, "-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole CPU suite: golden, interpreter kernel tests, bug regressions."""
    _install(session)
    session.run("pytest", "-n", "auto", *session.posargs, env=INTERPRET)


@nox.session
def train(session: nox.Session) -> None:
    """nox -s train -- [options]: the main job, python -m mhc_ops.train (--help lists the options)."""
    _install(session, None)
    session.run("python", "-m", "mhc_ops.train", *session.posargs)


@nox.session
def test_stage(session: nox.Session) -> None:
    """nox -s test_stage -- NAME: one stage's tests only."""
    _install(session)
    names = session.run(
        "python", "-c", "from mhc_ops.golden import STAGE_NAMES; print(*STAGE_NAMES)", silent=True
    ).split()
    if len(session.posargs) != 1 or session.posargs[0] not in names:
        session.error(f"usage: nox -s test_stage -- NAME, with NAME one of: {', '.join(names)}")
    session.run("pytest", "-n", "auto", "--stage", session.posargs[0], env=INTERPRET)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def fixtures(session: nox.Session) -> None:
    """Regenerate the frozen golden fixtures under tests/fixtures/frozen."""
    _install(session)
    session.run("python", "-m", "mhc_ops.golden", "--write", "tests/fixtures/frozen")


@nox.session
def bugs(session: nox.Session) -> None:
    """The bug regression tests, tests/bugs (their records are docs/bugs)."""
    _install(session)
    session.run("pytest", "-n", "auto", "tests/bugs", *session.posargs, env=INTERPRET)


@nox.session
def fuzz(session: nox.Session) -> None:
    """nox -s fuzz -- [N]: the hypothesis tests with N (default 200) fresh examples each, not CI's fixed ones."""
    _install(session)
    examples = session.posargs[0] if session.posargs else "200"
    session.run("pytest", "-n", "auto", "-q", "tests/test_ops_fuzz.py", "tests/kernels/test_post_kernels.py",
                "tests/kernels/test_sinkhorn_kernels.py", "tests/kernels/test_fused_bwd.py", "-k", "fuzz",
                env={**INTERPRET, "MHC_FUZZ": examples})


@nox.session
def diagnose(session: nox.Session) -> None:
    """nox -s diagnose -- STAGE [options]: python -m mhc_ops.diagnose on CPU; --help lists the options."""
    _install(session)
    session.run("python", "-m", "mhc_ops.diagnose", *session.posargs, env=INTERPRET)


@nox.session
def compile_check(session: nox.Session) -> None:
    """Every Triton kernel compiled for an H100/H200 (sm_90) on this CPU machine, no GPU:
    python -m benchmarks.compile_check (what the interpreter cannot catch; about 3 minutes on 2 cores)."""
    _install(session)
    session.run("python", "-m", "benchmarks.compile_check", *session.posargs, env={"TRITON_INTERPRET": "0"})


# The device image's Triton: its compiled code can differ from a newer release's (the decode kernel's Sinkhorn tile:
# one matrix per thread under 3.9, spread over 16 lanes under 3.6; docs/perf.md, Performance XVII).
GPU_IMAGE_TRITON = "3.6.0"


@nox.session
def compile_check_image(session: nox.Session) -> None:
    """nox -s compile_check_image -- [args]: compile_check with the GPU image's Triton (GPU_IMAGE_TRITON), the
    compiled code the device runs (its registers, spills, SASS)."""
    _install(session)
    session.install(f"triton=={GPU_IMAGE_TRITON}")
    session.run("python", "-m", "benchmarks.compile_check", *session.posargs, env={"TRITON_INTERPRET": "0"})


@nox.session
def host_cpu(session: nox.Session) -> None:
    """nox -s host_cpu -- [args]: the host time of each training-path call without its launches (recorded,
    none run), on this machine with no GPU: python -m benchmarks.host_profile --no-launch; --help lists the
    options."""
    _install(session)
    session.run("python", "-m", "benchmarks.host_profile", "--no-launch", *session.posargs, env={"TRITON_INTERPRET": "0"})


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """nox -s bench -- [args]: python -m benchmarks.run in the current environment (its torch and
    triton, e.g. a GPU machine's); --help lists the options."""
    session.run("python", "-m", "benchmarks.run", *session.posargs)


GPU_DIAGNOSTICS = ("host_profile", "fwd_splits", "kernel_breakdown", "weight_split", "decode_timeline", "sinkhorn_chain")


@nox.session(venv_backend="none")
def diagnose_gpu(session: nox.Session) -> None:
    """nox -s diagnose_gpu -- NAME [args]: python -m benchmarks.NAME in the current environment, NAME one
    of GPU_DIAGNOSTICS; --help after NAME lists its options."""
    if not session.posargs or session.posargs[0] not in GPU_DIAGNOSTICS:
        session.error(f"usage: nox -s diagnose_gpu -- NAME [args], with NAME one of: {', '.join(GPU_DIAGNOSTICS)}")
    session.run("python", "-m", f"benchmarks.{session.posargs[0]}", *session.posargs[1:])


# ---- the Hugging Face integrations on other transformers releases ---------------------------------------
# The tests session runs tests/integrations with the transformers of pyproject's extra; this one runs them
# with other releases of the table the integrations have read (mhc_ops/integrations/_versions.py, plain
# data, read here without torch), one after the other in one venv of its own (torch is installed once).
HF_RELEASES = runpy.run_path(str(pathlib.Path(__file__).parent / "mhc_ops" / "integrations" / "_versions.py"))
# Declared dependencies the package index lacks, per release: the release is installed with --no-deps,
# then its other requirements. 5.25.0 hard-requires kernels>=0.19.1,<0.20; it imports and runs without it.
HF_UNAVAILABLE = {"5.25.0": ("kernels",)}
_REQUIRES = "import importlib.metadata as m; print(*(r for r in m.requires('transformers') if 'extra ==' not in r), sep='\\n')"


def _install_transformers(session: nox.Session, version: str) -> None:
    session.install("--no-deps", f"transformers=={version}")
    requires = session.run("python", "-c", _REQUIRES, silent=True).splitlines()
    unavailable = HF_UNAVAILABLE.get(version, ())
    session.install(*(r for r in requires if re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0] not in unavailable))


@nox.session
def hf(session: nox.Session) -> None:
    """nox -s hf -- [VERSION ...] [pytest arguments]: tests/integrations with each transformers release
    given, in turn (default: the oldest and the newest read, as CI runs them)."""
    supported = HF_RELEASES["SUPPORTED_TRANSFORMERS"]
    versions = [arg for arg in session.posargs if arg in supported]
    pytest_args = [arg for arg in session.posargs if arg not in supported]
    bad = [arg for arg in pytest_args if re.fullmatch(r"\d+\.\d+\.\d+\S*", arg)]  # a release not read
    if bad:
        session.error(f"nox -s hf: {bad[0]} is not a release read; expected one of: {', '.join(supported)}")
    _install(session)  # the test extra (its transformers replaced below)
    for version in versions or [HF_RELEASES["OLDEST"], HF_RELEASES["NEWEST"]]:
        _install_transformers(session, version)
        session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/integrations", *pytest_args, env=INTERPRET)

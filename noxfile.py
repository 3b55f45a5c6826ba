"""Sessions: tests (CI), train (the main job), test_stage -- NAME, bugs, lint, fixtures, diagnose, bench."""

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
def diagnose(session: nox.Session) -> None:
    """nox -s diagnose -- STAGE [options]: python -m mhc_ops.diagnose on CPU; --help lists the options."""
    _install(session)
    session.run("python", "-m", "mhc_ops.diagnose", *session.posargs, env=INTERPRET)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """nox -s bench -- [args]: python -m benchmarks.run in the current environment (its torch and
    triton, e.g. a GPU machine's); --help lists the options."""
    session.run("python", "-m", "benchmarks.run", *session.posargs)


GPU_DIAGNOSTICS = ("host_profile", "fwd_splits", "kernel_breakdown", "weight_split")


@nox.session(venv_backend="none")
def diagnose_gpu(session: nox.Session) -> None:
    """nox -s diagnose_gpu -- NAME [args]: python -m benchmarks.NAME in the current environment, NAME one
    of host_profile, fwd_splits, kernel_breakdown, weight_split; --help after NAME lists its options."""
    if not session.posargs or session.posargs[0] not in GPU_DIAGNOSTICS:
        session.error(f"usage: nox -s diagnose_gpu -- NAME [args], with NAME one of: {', '.join(GPU_DIAGNOSTICS)}")
    session.run("python", "-m", f"benchmarks.{session.posargs[0]}", *session.posargs[1:])

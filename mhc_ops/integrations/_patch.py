"""What the integrations share: the installed transformers' row of the release table (_versions.py), the
fingerprint checks, and patching a model's modules or the transformers classes.

A model family (``Family``) names its transformers module, the classes whose forwards it replaces (by
part: ``hyper_connection``, ``hyper_head``), and a factory of the replacement forwards for a release
row and a backend. Only code that was read is patched: the installed version must be a row's, and
every fingerprinted class's forward must have that row's fingerprint.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import textwrap
import tokenize
import types
from collections.abc import Callable

import torch

from ._versions import RELEASES, SUPPORTED_TRANSFORMERS

BACKENDS = ("auto", "golden", "triton")
_OURS = "_mhc_ops_forward"  # set on every replacement forward
_BASE = "_mhc_ops_base"  # a patched class's HF class
_MISSING = object()


def ours(forward: Callable) -> Callable:
    """Mark a replacement forward (so a class made after a class patch, which inherits it, passes the checks)."""
    setattr(forward, _OURS, True)
    return forward


def _is_ours(forward) -> bool:
    return getattr(inspect.unwrap(forward), _OURS, False)


@dataclasses.dataclass(eq=False)
class Family:
    key: str  # "deepseek_v4": its name in RELEASES' rows, and what apply() reports
    label: str  # "DeepSeek-V4", in messages
    module: str  # transformers' modeling module
    entry: str  # the public apply function, in messages
    parts: dict[str, tuple[str, ...]]  # part -> the classes whose forwards it replaces
    markers: tuple[str, ...]  # classes whose instances mean a model holds this family's hyper-connections
    attributes: Callable[[dict], dict[str, tuple[str, ...]]]  # row -> class -> attributes the forwards read
    forwards: Callable[[dict, str], dict[str, Callable]]  # (row, backend) -> class -> replacement forward
    # class -> its forward before a class patch (what revert(None) restores)
    originals: dict[type, Callable] = dataclasses.field(default_factory=dict)

    def holds(self, model: torch.nn.Module) -> bool:
        """Whether model holds a module of a marker class (checked by name: imports nothing)."""
        for module in model.modules():
            for cls in type(module).__mro__:
                if cls.__module__ == self.module and cls.__name__ in self.markers:
                    return True
        return False


# ---- the release and the checks -------------------------------------------------------------------------


@functools.cache
def fingerprint(func: Callable) -> str:
    """The first 16 hex digits of a sha256 of a function's code tokens, with comments, the docstring, line
    breaks and indentation left out: re-wrapping lines keeps it, any other change (even added
    parentheses) does not. Decorators are part of the source inspect reads, so part of it."""
    source = textwrap.dedent(inspect.getsource(func))
    definition = ast.parse(source).body[0]
    first = definition.body[0]
    docstring = range(first.lineno, first.end_lineno + 1) if ast.get_docstring(definition) is not None else range(0)
    code = (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)
    tokens = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type in code and tok.start[0] not in docstring
    ]
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:16]


def _version() -> str:
    import transformers

    return transformers.__version__


def unsupported(family: Family, what: str) -> RuntimeError:
    return RuntimeError(
        f"mhc_ops.integrations.{family.entry}: transformers {_version()} {what}; the patch was checked against "
        f"transformers {', '.join(SUPPORTED_TRANSFORMERS)} (install one of them), and patches nothing it has not read"
    )


def release(family: Family) -> dict:
    """The installed transformers' row for family: its fingerprints and adapters, with "family" (the
    version family) added. RuntimeError for a version no row lists."""
    version = _version()
    for row in RELEASES:
        if version in row["versions"]:
            return row[family.key] | {"family": row["family"]}
    raise unsupported(family, "is not a release whose code was read")


def _check_forward(family: Family, row: dict, cls: type, name: str) -> None:
    """RuntimeError unless cls's forward, before any patch of ours, is the row's code (its own or
    inherited; unwrapped, as inspect reads it, from wrappers such as the checkpointing one)."""
    forward = family.originals.get(cls, cls.forward)
    if _is_ours(forward):  # a subclass made after a class patch inherits ours
        return
    try:
        got = fingerprint(forward)
    except (OSError, TypeError, SyntaxError) as e:  # no source to read (a compiled or generated forward)
        raise unsupported(family, f"has a {cls.__qualname__}.forward whose source cannot be read ({e})") from e
    want = row["fingerprints"][name]
    if got != want:
        raise unsupported(
            family,
            f"has a {cls.__qualname__}.forward (fingerprint {got}) unlike {name}.forward of the transformers "
            f"{row['family']} releases read ({want}): its math may have changed",
        )


def modeling(family: Family) -> tuple[types.ModuleType, dict]:
    """(transformers' modeling module, the release row) once every class the row fingerprints is there
    and has the row's code."""
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{family.entry} needs transformers: pip install -e \".[transformers]\" in the mhc-ops clone") from e
    row = release(family)
    try:
        module = importlib.import_module(family.module)
    except ImportError as e:
        raise unsupported(family, f"has no {family.label} ({family.module.rsplit('.', 1)[0]})") from e
    missing = [name for name in row["fingerprints"] if not isinstance(getattr(module, name, None), type)]
    if missing:
        raise unsupported(family, f"has no {', '.join(missing)} in {family.module}")
    for name in row["fingerprints"]:
        _check_forward(family, row, getattr(module, name), name)
    return module, row


def _check_module(family: Family, row: dict, path: str, module: torch.nn.Module, name: str) -> None:
    """RuntimeError if a model's module lacks an attribute the replacement reads, has a forward (its
    class's, a subclass's) unlike the row's, or carries a forward of its own (accelerate's hooks set
    one: it calls the forward it saved, which a patch would not reach)."""
    missing = []
    for dotted in family.attributes(row)[name]:
        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            missing.append(dotted)
    if missing:
        raise unsupported(family, f"built a {name} ({path}) without {', '.join(missing)}")
    _check_forward(family, row, base_class(type(module)), name)
    if "forward" in vars(module):
        raise RuntimeError(
            f"{family.entry}(model): {path} has a forward of its own ({vars(module)['forward']!r}, e.g. an "
            f"accelerate hook's), which a patch would not reach; call {family.entry}() before the model is "
            "built or loaded instead"
        )


def check_backend(entry: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{entry}: backend: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


# ---- patching -------------------------------------------------------------------------------------------


@functools.cache
def patched_class(cls: type, forward: Callable) -> type:
    """cls with our forward: a subclass of the same name (so isinstance checks, `_no_split_modules` and
    FSDP's wrap-by-class-name still find it), made as transformers makes its classes. That matters for
    the decoder layers: since transformers 5.23 GradientCheckpointingLayer.__init_subclass__ wraps every
    forward for activation checkpointing, and a bare replacement would silently drop the wrapper.
    A model's module gets this class; a class patch takes its forward."""
    attrs = {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__, _BASE: cls}
    return type(cls.__name__, (cls,), attrs)


def is_patched_class(cls: type) -> bool:
    return _BASE in vars(cls)


def base_class(cls: type) -> type:
    """A patched class's HF class; any other class itself."""
    return vars(cls)[_BASE] if is_patched_class(cls) else cls


def plan(family: Family, model: torch.nn.Module | None, parts: tuple[str, ...], backend: str) -> Callable[[], dict]:
    """Check everything apply needs (the release, the code, model's modules) and patch nothing; -> the
    patch, a function that applies it and returns class name -> modules patched (model None: the
    classes, 1 each)."""
    check_backend(family.entry, backend)
    module, row = modeling(family)
    forwards = family.forwards(row, backend)
    chosen = {name: forwards[name] for part in parts for name in family.parts[part]}
    if model is None:

        def patch_classes() -> dict[str, int]:
            for name, forward in chosen.items():
                cls = getattr(module, name)
                family.originals.setdefault(cls, cls.forward)
                cls.forward = patched_class(cls, forward).forward
            return dict.fromkeys(chosen, 1)

        return patch_classes
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{family.entry}(model): expected a torch.nn.Module or None, got {type(model).__name__}")
    if not family.holds(model):
        raise ValueError(f"{family.entry}(model): {type(model).__name__} holds no {family.label} hyper-connection")
    targets = [
        (path, m, name)
        for path, m in model.named_modules()
        for name in chosen
        if isinstance(m, getattr(module, name))
    ]
    for path, m, name in targets:
        _check_module(family, row, path, m, name)

    def patch_modules() -> dict[str, int]:
        counts = dict.fromkeys(chosen, 0)
        for _, m, name in targets:  # a module patched before (another backend) is patched anew
            m.__class__ = patched_class(base_class(type(m)), chosen[name])
            counts[name] += 1
        return counts

    return patch_modules


def apply(family: Family, model: torch.nn.Module | None, parts: tuple[str, ...], backend: str) -> dict[str, int]:
    """Patch the classes (model None) or model's modules, once everything is checked; -> class name ->
    modules patched (model None: the classes, 1 each)."""
    return plan(family, model, parts, backend)()


def revert(family: Family, model: torch.nn.Module | None) -> int:
    """Undo apply: model None restores the classes' forwards; a model, its modules' classes (this
    family's). -> how many classes or modules were restored."""
    if model is None:
        for cls, forward in family.originals.items():
            cls.forward = forward
        restored = len(family.originals)
        family.originals.clear()
        return restored
    restored = 0
    for m in model.modules():
        if is_patched_class(type(m)) and base_class(type(m)).__module__ == family.module:
            m.__class__ = base_class(type(m))
            restored += 1
    return restored

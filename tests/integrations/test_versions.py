"""The release table (mhc_ops/integrations/_versions.py): consistent as data, one test per version
family that the installed transformers, when of that family, is what the row says, and the refusal of
any release the table does not list."""

from __future__ import annotations

import re

import pytest
from packaging.version import Version

from mhc_ops.integrations import _patch, _versions, deepseek_v4, glm5_next

FAMILIES = (deepseek_v4.FAMILY, glm5_next.FAMILY)
ADAPTERS = {"deepseek_v4": {"norm_eps"}, "glm5_next": {"norm_eps", "cache"}}


def test_release_table_is_consistent():
    versions = [v for row in _versions.RELEASES for v in row["versions"]]
    assert versions == sorted(versions, key=Version) and len(set(versions)) == len(versions)
    assert _versions.SUPPORTED_TRANSFORMERS == tuple(versions)
    assert (_versions.OLDEST, _versions.NEWEST) == (versions[0], versions[-1])
    names = {row["family"] for row in _versions.RELEASES}
    assert len(names) == len(_versions.RELEASES)
    for family in FAMILIES:
        classes = {name for part in family.parts.values() for name in part}
        for row in _versions.RELEASES:
            entry = row[family.key]
            assert set(entry) == {"fingerprints"} | ADAPTERS[family.key], (row["family"], family.key)
            # every class a forward replaces is fingerprinted, and every fingerprint is 16 hex digits
            assert classes <= set(entry["fingerprints"]), (row["family"], family.key)
            assert all(re.fullmatch("[0-9a-f]{16}", f) for f in entry["fingerprints"].values())
    # Neighbouring families differ in something (else they would be one).
    for a, b in zip(_versions.RELEASES, _versions.RELEASES[1:]):
        assert any(a[f.key] != b[f.key] for f in FAMILIES), (a["family"], b["family"])


@pytest.mark.parametrize("row", _versions.RELEASES, ids=[row["family"] for row in _versions.RELEASES])
def test_release_family(row):
    """The installed transformers, where it is of this family: each fingerprinted forward has the row's
    fingerprint, and what the adapters name is there: the norms' eps attribute (and not the other
    name), GLM-5-Next's layer's cache argument. Other families skip (nox -s hf -- VERSION runs one)."""
    transformers = pytest.importorskip("transformers")
    if transformers.__version__ not in row["versions"]:
        pytest.skip(f"transformers {transformers.__version__} is not of family {row['family']}")
    import inspect

    from .families import CASES, tiny_model

    for family in FAMILIES:
        module, got = _patch.modeling(family)
        entry = row[family.key]
        assert got == entry | {"family": row["family"]}
        for name, fingerprint in entry["fingerprints"].items():
            assert _patch.fingerprint(getattr(module, name).forward) == fingerprint, name
        case = CASES[family.key]
        model = tiny_model(case)
        config = getattr(model.config, "text_config", model.config)
        norms = [m.input_norm for m in model.modules() if type(m).__name__ == case.hc_class]
        other = ({"eps", "variance_epsilon"} - {entry["norm_eps"]}).pop()
        assert norms and all(getattr(n, entry["norm_eps"]) == config.rms_norm_eps for n in norms)
        assert not any(hasattr(n, other) for n in norms)
        if "cache" in entry:
            assert entry["cache"] in inspect.signature(getattr(module, case.layer_class).forward).parameters


def _unlisted() -> list[str]:
    """Releases the table does not list: before the oldest, after the newest, the newest's pre-release."""
    oldest, newest = Version(_versions.OLDEST), Version(_versions.NEWEST)
    return [f"{oldest.major}.{oldest.minor - 1}.0", f"{newest.major}.{newest.minor + 1}.0", f"{newest}.dev0"]


@pytest.mark.parametrize("version", _unlisted())
def test_unlisted_release_is_refused(version, monkeypatch):
    """Whatever its code: the version is checked first, and nothing is patched."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(transformers, "__version__", version)
    from mhc_ops import integrations

    from .families import CASES, is_patched, tiny_model

    supported = re.escape(", ".join(_versions.SUPPORTED_TRANSFORMERS))
    for family in FAMILIES:
        message = rf"{family.entry}: transformers {re.escape(version)} is not a release whose code was read; .*{supported}"
        with pytest.raises(RuntimeError, match=message):
            CASES[family.key].apply()
        model = tiny_model(CASES[family.key])
        with pytest.raises(RuntimeError, match=message):
            integrations.apply(model)
        assert not any(is_patched(m) for m in model.modules()) and not family.originals


class _Plain:
    def forward(self, x):
        return torch_add(x * 2, 1)


# fmt: off
class _Reformatted:
    def forward(self,
                x):
        """A docstring."""
        # a comment
        return torch_add(x * 2,
                         1)
# fmt: on


class _Changed:
    def forward(self, x):
        return torch_add(x * 2, -1)


def torch_add(a, b):
    return a + b


def test_fingerprint_ignores_layout_comments_and_docstring():
    fingerprint = _patch.fingerprint
    assert fingerprint(_Plain.forward) == fingerprint(_Reformatted.forward) != fingerprint(_Changed.forward)

"""Bug records (docs/bugs/*.md) and their regression tests (tests/bugs/test_*.py) name each other."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECORDS_DIR = ROOT / "docs" / "bugs"
TESTS_DIR = ROOT / "tests" / "bugs"
INDEX = RECORDS_DIR / "README.md"
# A test named in a record: a path, optionally with ::function.
TEST_REF = re.compile(r"(tests/bugs/test_\w+\.py)(?:::(\w+))?")
# Any path under tests/ a record names (the pre-stop hook requires each one to exist).
ANY_TEST_PATH = re.compile(r"tests/[A-Za-z0-9_/.-]+\.py")

RECORDS = sorted(p for p in RECORDS_DIR.glob("*.md") if p != INDEX)
MODULES = sorted(p for p in TESTS_DIR.glob("test_*.py") if p.name != "test_records.py")


def _functions(module: pathlib.Path) -> set[str]:
    return {n.name for n in ast.parse(module.read_text()).body if isinstance(n, ast.FunctionDef)}


def _declared_record(module: pathlib.Path) -> str | None:
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RECORD" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def test_there_are_records_and_modules():
    assert len(RECORDS) >= 6 and len(MODULES) >= 6


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: p.name)
def test_record_names_existing_test_functions(record):
    text = record.read_text()
    refs = TEST_REF.findall(text)
    assert any(func for _, func in refs), f"{record.name} names no tests/bugs/test_*.py::test_function"
    for path, func in refs:
        assert (ROOT / path).is_file(), f"{record.name} names {path}, which does not exist"
        if func:
            assert func in _functions(ROOT / path), f"{record.name} names {path}::{func}, which does not exist"


@pytest.mark.parametrize("doc", [*RECORDS, INDEX], ids=lambda p: p.name)
def test_every_test_path_in_the_docs_exists(doc):
    missing = [p for p in ANY_TEST_PATH.findall(doc.read_text()) if not (ROOT / p).is_file()]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_declares_a_record_that_names_it(module):
    record = _declared_record(module)
    assert record, f"{module.name} declares no RECORD"
    assert (ROOT / record).is_file(), f"{module.name}: RECORD {record} does not exist"
    assert f"tests/bugs/{module.name}" in (ROOT / record).read_text(), f"{record} does not name {module.name}"


def test_index_links_every_record():
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", INDEX.read_text()))
    assert linked == {p.name for p in RECORDS}

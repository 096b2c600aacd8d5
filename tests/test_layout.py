"""The test tree's own rules. Fixtures and helpers live in conftest.py or in helper modules (not named test_*), so no
module imports a test module or a conftest: that would run the imported module's code a second time under another
name, and tie one file's tests to another's helpers. And the unit tier stays in this process (tests/conftest.py)."""

import ast
import multiprocessing
import re
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module `path` imports, relative imports resolved against its package."""
    package = path.relative_to(TESTS.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            # `from tests.api import test_api` names the module in the alias.
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_no_module_imports_a_test_module_or_a_conftest():
    offences = []
    for path in sorted(TESTS.rglob("*.py")):
        for line, module in imported_modules(path):
            last = module.rsplit(".", 1)[-1]
            if module.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                offences.append(f"{path.relative_to(TESTS.parent)}:{line} imports {module}")
    assert not offences, "move what is shared into conftest.py or a helper module:\n" + "\n".join(offences)


def test_the_check_sees_absolute_relative_and_aliased_imports(tmp_path, monkeypatch):
    module = TESTS / "api" / "test_example.py"
    source = "from tests.api.test_api import x\nfrom .test_streams import y\nfrom tests.api import conftest\n"
    monkeypatch.setattr(Path, "read_text", lambda self: source)
    names = [name for _, name in imported_modules(module)]
    assert {"tests.api.test_api", "tests.api.test_streams", "tests.api.conftest"} <= set(names)


@pytest.mark.parametrize(
    ("start", "refusal"),
    [
        (lambda: subprocess.run(["true"]), "start a process (subprocess)"),
        (
            lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
            "start a process (multiprocessing)",
        ),
        (lambda: socket.create_connection(("127.0.0.1", 6379), timeout=1), "connect a socket to a server"),
        (lambda: __import__("psycopg").connect("postgresql://127.0.0.1:5432/postgres"), "connect to PostgreSQL"),
    ],
    ids=["subprocess", "multiprocessing", "socket", "postgresql"],
)
def test_a_unit_test_that_leaves_the_process_fails(start, refusal):
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"a unit test may not {refusal}")):
        start()

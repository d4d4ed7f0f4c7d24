"""The layout's rules, kept by tests: every package of changes_app sits in a layer of the import
contracts, no module reaches for another module's private name, and no first-party import hides
inside a function (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Django's documented attributes that start with an underscore.
DJANGO_PUBLIC = {"_meta", "_state", "_default_manager", "_base_manager"}
CODE = ("changes_app", "audit_app", "flamingock_site")
FIRST_PARTY = set(CODE)

#: Function-level first-party imports that are not a way around a contract, each with its reason.
FUNCTION_IMPORTS_ALLOWED = {
    # Django registers signal receivers, checks and plug-ins from AppConfig.ready().
    "changes_app/apps.py",
    # The Celery worker's start-up hooks reach the apps once Django is set up.
    "flamingock_site/celery.py",
}


def _modules() -> list[Path]:
    return [path for package in CODE for path in sorted((REPO / package).rglob("*.py")) if "migrations" not in path.parts]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_package_of_changes_app_is_in_a_layer_of_the_contract():
    layers = next(contract for contract in _contracts() if contract["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    children = {
        f"changes_app.{path.stem if path.is_file() else path.name}"
        for path in (REPO / "changes_app").iterdir()
        if (path.is_dir() and (path / "__init__.py").exists() and path.name != "migrations") or (path.suffix == ".py" and path.stem != "__init__")
    }
    assert children, "changes_app has no packages or modules"
    assert children - named == set(), f"not in any layer of the import contract: {sorted(children - named)}"
    assert named - children == set(), f"the contract names what does not exist: {sorted(named - children)}"


def test_audit_app_is_forbidden_to_import_changes_app_and_the_site():
    forbidden = [contract for contract in _contracts() if contract["type"] == "forbidden" and contract["source_modules"] == ["audit_app"]]
    assert forbidden and set(forbidden[0]["forbidden_modules"]) == {"changes_app", "flamingock_site"}


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _private_uses(path: Path) -> list[str]:
    """``from other import _name`` and ``other._name`` where ``other`` is another first-party module."""
    tree = ast.parse(path.read_text(), str(path))
    own = _module_name(path)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in FIRST_PARTY:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != own:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
                aliases[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FIRST_PARTY:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in DJANGO_PUBLIC:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_name():
    found = [use for path in _modules() for use in _private_uses(path)]
    assert found == []


def test_a_private_name_from_another_module_is_caught(tmp_path):
    # The check above must be able to fail: a module that does it is reported.
    sample = REPO / "changes_app" / "_layout_probe.py"
    sample.write_text("from changes_app.errors import _hidden\nfrom changes_app import conf\nconf._secret\n")
    try:
        assert len(_private_uses(sample)) == 2
    finally:
        sample.unlink()


def _function_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.ImportFrom) and node.level > 0:
                    names = ["(relative)"]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                if any(name == "(relative)" or name.split(".")[0] in FIRST_PARTY for name in names):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_first_party_import_hides_inside_a_function():
    found = [where for path in _modules() if str(path.relative_to(REPO)) not in FUNCTION_IMPORTS_ALLOWED for where in _function_imports(path)]
    assert found == []

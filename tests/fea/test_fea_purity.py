"""fea/ is the pure-Python domain layer: the standard library and fea itself only (no JAX)."""

import ast
import pathlib
import subprocess
import sys

import facialr1_jax.fea

FEA_DIR = pathlib.Path(facialr1_jax.fea.__file__).parent


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_fea_imports_only_the_standard_library_and_itself():
    sources = sorted(FEA_DIR.glob("*.py"))
    assert len(sources) >= 7
    for path in sources:
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if module.startswith("facialr1_jax."):
                assert module.startswith("facialr1_jax.fea"), (path.name, module)
            else:
                assert top == "__future__" or top in sys.stdlib_module_names, (path.name, module)


def test_importing_fea_does_not_load_jax():
    code = (
        "import sys, facialr1_jax.fea; "
        "print(sorted(m for m in ('jax', 'numpy', 'flax') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"

"""The project skeleton keeps its promises: one namespace, a console script, no leaked top-level modules."""
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def test_every_subpackage_is_listed_in_pyproject():
    cfg = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                found.add(pkg if rel == "." else pkg + "." + rel.replace(os.sep, "."))
    assert found <= listed, f"sub-packages missing from pyproject packages: {sorted(found - listed)}"


def test_console_script_version_and_help():
    r = subprocess.run([os.path.join(BIN, "nnfuse"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nnfuse ")
    r = subprocess.run([os.path.join(BIN, "nnfuse"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "dump" in r.stdout


def test_no_top_level_ir_or_passes_module_leaks():
    code = "import importlib.util as u; print(u.find_spec('ir'), u.find_spec('passes'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.stdout.strip() == "None None"


def test_ir_does_not_import_torch_onnx_or_backends():
    code = ("import sys, nnfuse.ir, nnfuse.passes; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','onnx','onnxruntime','triton') or m.startswith('nnfuse.backends')]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _imports(folder: str):
    """(file, imported module) for every import in a source folder, relative imports resolved to nnfuse names."""
    import ast
    pkg = {"ir": "nnfuse.ir", "passes": "nnfuse.passes", "frontends": "nnfuse.frontends", "backends": "nnfuse.backends",
           "compiler": "nnfuse"}[folder]
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        here = pkg + "".join("." + p for p in os.path.relpath(dirpath, os.path.join(ROOT, folder)).split(os.sep) if p != ".")
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.Import):
                        for a in node.names:
                            yield path, a.name
                    elif isinstance(node, ast.ImportFrom):
                        base = here.split(".")
                        mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                            if node.level else node.module
                        yield path, mod


def test_layering_one_direction():
    """Frontends only produce IR, backends only consume it, passes only rewrite it: none imports across (lazy imports
    inside functions included)."""
    rules = {"frontends": ("nnfuse.backends",), "backends": ("nnfuse.frontends",),
             "passes": ("nnfuse.frontends", "nnfuse.backends"), "ir": ("nnfuse.frontends", "nnfuse.backends",
                                                                       "nnfuse.passes", "torch", "onnx")}
    bad = [(os.path.relpath(p, ROOT), m) for folder, banned in rules.items() for p, m in _imports(folder)
           if any(m == b or m.startswith(b + ".") for b in banned)]
    assert bad == []

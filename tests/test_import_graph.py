"""The layout shows the architecture: who may import whom inside `detailflow_hf`, checked on the source."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detailflow_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module -> the package modules it imports (at any depth of the file, relative or absolute)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("detailflow_hf"):
                    found.add(target)
                    found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("detailflow_hf"))
        modules = {
            m
            for m in found
            if (PACKAGE.parent / m.replace(".", "/")).with_suffix(".py").is_file()
            or (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()
        }
        graph[name] = modules - {name}
    return graph


def test_models_know_nothing_above_them():
    for module, targets in imports().items():
        if module.startswith("detailflow_hf.models"):
            above = [
                t
                for t in targets
                if t.split(".")[1] in ("pipelines", "training", "conversion", "hub", "cli", "evaluation")
            ]
            assert not above, f"{module} imports {above}"


def test_evaluation_depends_on_no_training_module():
    for module, targets in imports().items():
        if module.startswith("detailflow_hf.evaluation"):
            assert not [t for t in targets if t.startswith("detailflow_hf.training")], module


def test_no_import_cycles_between_modules():
    graph = imports()
    # a package's __init__ re-exporting its modules is not a cycle through them
    edges = {
        m: {t for t in ts if not (m.count(".") < t.count(".") and t.startswith(m + "."))} for m, ts in graph.items()
    }
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for target in edges.get(node, ()):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(target) :] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_no_module_imports_a_package_module_by_string():
    """`importlib.import_module("detailflow_hf...")` or `__import__` would hide an edge from the checks above."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            target = str(node.args[0].value)
            if name in ("import_module", "__import__") and (target.startswith(("detailflow_hf", "."))):
                found.append(f"{path.relative_to(PACKAGE)}: {name}({target!r})")
    assert not found, found


def test_exported_code_is_copied_verbatim_and_each_folder_is_self_contained():
    """The remote-code loaders of diffusers and transformers follow `from .x import` inside one folder
    only: every file of the export manifest imports only package files exported beside it."""
    from detailflow_hf.hub import CODE_FILES

    exported = {destination: source for source, destination in CODE_FILES}
    for destination, source in exported.items():
        folder = destination.rpartition("/")[0]
        source_folder = source.rpartition("/")[0]
        for node in ast.walk(ast.parse((PACKAGE / source).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detailflow_hf"):
                raise AssertionError(f"{source} imports {node.module} by absolute name")
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{source}: 'from {'.' * node.level}{node.module}' leaves its folder"
                sibling = f"{source_folder}/{node.module}.py".lstrip("/")
                beside = f"{folder}/{node.module}.py".lstrip("/")
                assert exported.get(beside) == sibling, f"{source} imports .{node.module}: not exported as {beside}"


def test_setup_cfg_lists_every_package():
    """setup.cfg names its packages (the Space app is mapped in from spaces_demo/), so a new subpackage
    must be added there or the wheel silently lacks it."""
    import configparser

    config = configparser.ConfigParser()
    config.read(PACKAGE.parents[1] / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {module_name(path) for path in PACKAGE.rglob("__init__.py")} | {"detailflow_hf.spaces_demo"}
    assert listed == found

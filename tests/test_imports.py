"""The architecture's layers import one way only, and no module hides a cycle inside a function.

From the bottom up: errors; backend (arrays, BLAS, threads); nn (the engine); files (model
files) and data; train; apps (cli, serve, plots), with the package's public modules
(`barenet`, `barenet.sklearn`) on top. A module may import its own layer and those below it.
"""

import ast
from pathlib import Path

import barenet

SRC = Path(barenet.__file__).parent
LEVEL = {"errors": 0, "version": 0, "backend": 1, "nn": 2, "files": 3, "data": 4, "train": 5, "apps": 6,
         "sklearn": 7, "__init__": 7, "__main__": 7}  # fmt: skip


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _imports(path: Path):
    """(target module, line, inside a function?) for every barenet import in the file."""
    tree = ast.parse(path.read_text())
    package = _module(path).split(".")[:-1] if path.name != "__init__.py" else \
        _module(path).split(".")[:-1]  # fmt: skip
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            # "from .nn import model" imports the module nn.model; "from .layers import Dense"
            # the module layers
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            names = [n for n in names if _is_module(n)] or [target]
            for name in names:
                yield name or "__init__", node.lineno, id(node) in in_function
        elif isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for mod in mods:
                if mod and (mod == "barenet" or mod.startswith("barenet.")):
                    yield mod.removeprefix("barenet").lstrip(".") or "__init__", node.lineno, \
                        id(node) in in_function  # fmt: skip


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _level(module: str) -> int:
    return LEVEL[module.split(".")[0]]


def test_every_import_goes_down_the_layers():
    wrong = []
    for path in SRC.rglob("*.py"):
        me = _module(path)
        for target, line, _ in _imports(path):
            if _level(target) > _level(me):
                wrong.append(f"{me}:{line} imports {target}")
    assert not wrong, wrong


def test_no_import_inside_a_function_except_the_command_line():
    """The command line may import lazily, to start fast; elsewhere an import inside a
    function would be a cycle in hiding."""
    hidden = [
        f"{_module(path)}:{line} imports {target}"
        for path in SRC.rglob("*.py")
        if _module(path) != "apps.cli"
        for target, line, inside in _imports(path)
        if inside
    ]
    assert not hidden, hidden


def test_the_module_graph_has_no_cycle():
    graph = {}
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    for me, path in modules.items():
        targets = set()
        for target, _, _ in _imports(path):
            targets.add(target if target in modules else f"{target}.__init__")
        graph[me] = {t for t in targets if t in modules and t != me}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for t in graph[node]:
            if state.get(t) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, t])}")
            if t not in state:
                visit(t, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])

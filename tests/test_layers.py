"""The shape of the code: layers import downwards only, no import cycles, short functions,
and function-local imports only for optional dependencies.

Read from the source with ``ast`` (nothing is imported), so a violation anywhere in the
library fails here, also in code that no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "teachers", "students")

#: Each layer and the layers it may import (besides itself). The command line may import anything.
LAYERS: dict[str, frozenset[str]] = {
    "distill.core": frozenset(),
    "distill.objective": frozenset({"distill.core"}),
    "teachers": frozenset({"distill.core", "distill.objective"}),
    "students": frozenset({"distill.core"}),
    "distill.samples": frozenset({"distill.core"}),
    "distill.targets": frozenset({"distill.core", "distill.objective", "teachers"}),
    "distill.train": frozenset({"distill.core", "distill.objective", "distill.targets", "students"}),
    "distill.report": frozenset({"distill.core", "distill.objective", "distill.targets", "students"}),
    "distill.deploy": frozenset({"distill.core", "students"}),
    "distill.cli": frozenset(),  # filled below: everything
}
LAYERS["distill.cli"] = frozenset(LAYERS) - {"distill.cli"}

MAX_FUNCTION_LINES = 80
#: A function may be longer when its ``def`` line says why: ``def f(...):  # long: <reason>``.
LONG_MARK = "# long:"
#: Function-local imports are for optional dependencies only (module, imported name).
OPTIONAL_IMPORTS = {
    ("distill.samples", "skimage"),  # sample photos: skipped when scikit-image is absent
    ("distill.samples", "matplotlib"),  # sample photos: skipped when matplotlib is absent
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _layer(module: str) -> str | None:
    matches = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def _below(layer: str) -> frozenset[str]:
    """Every layer ``layer`` may reach, directly or through others."""
    reached, todo = set(), list(LAYERS[layer])
    while todo:
        current = todo.pop()
        if current not in reached:
            reached.add(current)
            todo.extend(LAYERS[current])
    return frozenset(reached)


def _project_module(name: str) -> str | None:
    """The project module (or package) that an imported name refers to, if it is one of ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported project module, line, only for type checking) of every import in ``module``.

    Includes imports inside functions and the module names a module passes to
    ``importlib.import_module`` (as string literals, like the console entry's command table).
    ``source``: the module's text (default: read from its file).
    """
    path = MODULES.get(module, ROOT / "nowhere.py")
    source = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    uses_importlib = "import_module" in source
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif uses_importlib and isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value in MODULES else []
        for name in names:
            target = _project_module(name)
            if target is not None and target != module:
                found.add((target, node.lineno, id(node) in typing_only))
    return sorted(found)


def _against_the_table(module: str, imports: list[tuple[str, int, bool]]) -> list[str]:
    layer = _layer(module)
    problems = []
    for target, line, typing_only in imports:
        target_layer = _layer(target)
        if layer is None or target_layer in (None, layer):
            continue
        # Names used in annotations only may come from any lower layer.
        allowed = _below(layer) if typing_only else LAYERS[layer]
        if target_layer not in allowed:
            problems.append(f"{module}:{line}: {layer} imports {target}")
    return problems


def test_every_module_belongs_to_a_layer():
    assert not [module for module in MODULES if _layer(module) is None and module not in ("distill",)]


def test_layers_import_only_what_the_table_allows():
    problems = [problem for module in MODULES for problem in _against_the_table(module, _imports(module))]
    assert not problems, "imports against the layer table:\n" + "\n".join(problems)


def test_the_layer_check_catches_an_upward_import():
    upward = "import distill.report.fidelity\n\ndef f():\n    from distill.cli import console\n"
    problems = "\n".join(_against_the_table("distill.core.errors", _imports("distill.core.errors", upward)))
    assert ":1: distill.core imports distill.report.fidelity" in problems
    assert ":4: distill.core imports distill.cli.console" in problems
    lazy = "def f():\n    import importlib\n    return importlib.import_module('distill.train')\n"
    assert _against_the_table("distill.deploy.stylize", _imports("distill.deploy.stylize", lazy))
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from teachers.gatys import TeacherConfig\n"
    assert not _against_the_table("distill.report.speed", _imports("distill.report.speed", typing_only))
    assert _against_the_table("distill.core.errors", _imports("distill.core.errors", typing_only))
    # The table itself: no layer reaches the command line, core reaches nothing, train and report are apart.
    assert all("distill.cli" not in _below(layer) for layer in LAYERS if layer != "distill.cli")
    assert _below("distill.core") == frozenset()
    assert "distill.report" not in _below("distill.train") and "distill.train" not in _below("distill.report")


def test_no_import_cycles():
    graph = {module: {target for target, _, typing_only in _imports(module) if not typing_only} for module in MODULES}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _functions():
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield module, path, lines, node


def test_functions_are_short_or_say_why():
    long = []
    for module, path, lines, node in _functions():
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and LONG_MARK not in lines[node.lineno - 1]:
            long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} has {length} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_MARK} <reason>' comment:\n" + "\n".join(long)


def test_function_local_imports_are_for_optional_dependencies():
    local = []
    for module, path, _, node in _functions():
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = [inner.module or ""]
            else:
                continue
            for name in names:
                if (module, name.split(".")[0]) not in OPTIONAL_IMPORTS:
                    local.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {node.name} imports {name}")
    assert not local, "function-local imports of required modules (import them at the top):\n" + "\n".join(local)


#: Calls that end the process, print, or change what the whole process shares (thread counts,
#: global RNG seeds, warning filters, stdout): only the command line may make them.
PROCESS_WIDE_CALLS = {
    "print", "sys.exit", "os.umask", "torch.set_num_threads", "torch.manual_seed", "random.seed", "np.random.seed",
    "torch.cuda.set_device", "warnings.simplefilter", "warnings.filterwarnings", "warnings.catch_warnings",
    "contextlib.redirect_stdout", "contextlib.redirect_stderr",
}
#: Process-wide settings that only the command line may assign.
PROCESS_WIDE_SETTINGS = ("torch.backends.", "Image.MAX_IMAGE_PIXELS", "warnings.showwarning", "sys.stdout", "sys.stderr")
#: The one kept exception: ``distill.core.devices.isolated_rng`` seeds the global generators
#: inside a scope that restores them on exit (for model initialisation and timm.create_model,
#: which take no generator).
SEEDED_UNDER_FORK_RNG = {
    ("distill.core.devices", "torch.manual_seed"),
    ("distill.core.devices", "random.seed"),
    ("distill.core.devices", "np.random.seed"),
}


def test_the_library_leaves_the_process_alone():
    found = []
    for module, path in MODULES.items():
        if _layer(module) == "distill.cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in PROCESS_WIDE_CALLS:
                if (module, ast.unparse(node.func)) not in SEEDED_UNDER_FORK_RNG:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node.func)}(...)")
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(target)} = ..."
                    for target in targets
                    if any(ast.unparse(target).startswith(setting) for setting in PROCESS_WIDE_SETTINGS)
                ]
            elif isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: raise SystemExit")
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and "tqdm" in ast.unparse(node):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: console progress bar (tqdm)")
    assert not found, "process-wide effects in the library (they belong in distill/cli/):\n" + "\n".join(found)


@pytest.mark.parametrize("command", ["teacher", "targets", "train", "compare", "export", "stylize"])
def test_console_entry_runs_every_command(command, capsys):
    from distill.cli.__main__ import COMMANDS, main

    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"style-distill {command}" in capsys.readouterr().out


def test_console_entry_refuses_an_unknown_command(capsys):
    from distill.cli.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["paint"])
    assert exit_info.value.code == 2
    assert "unknown command 'paint'" in capsys.readouterr().err

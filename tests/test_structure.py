"""The layout rules a program can check, read from the source with `ast` (and `tokenize` for comments).

The project's modules are the top-level *.py files (the run_*.py scripts and the few modules the design keeps beside
them), the zhtrain package and scripts/*.py; the root conftest.py is pytest's set-up, held to the rules of tests/. A rule the code breaks today is marked
`xfail(strict=True)` for that one file or function, with the violation as the reason: it fails once fixed, so the
mark goes then.
"""

import ast
import functools
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = sorted(p for p in ROOT.glob("*.py") if p.name != "conftest.py")
PACKAGE = sorted((ROOT / "zhtrain").rglob("*.py"))
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
RUN_SCRIPTS = [p for p in TOP if p.name.startswith("run_")]
# the root holds what users run and what the design names beside them; everything else shared is in zhtrain/
ROOT_MODULES = {"arguments.py", "trainer_seq2seq.py", "serve.py"}
SHARED = [p for p in TOP if not p.name.startswith("run_")] + PACKAGE
CODE = TOP + PACKAGE


def dotted(path: Path) -> str:
    """zhtrain/data/files.py -> zhtrain.data.files, zhtrain/chat/__init__.py -> zhtrain.chat, run_clm.py -> run_clm"""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# scripts/ is on sys.path too: its modules and the top level share one namespace
PROJECT = {p.stem: p for p in TOP + SCRIPTS} | {dotted(p): p for p in PACKAGE}

MAIN_MAX_LINES = 80
CLOSURE_MAX_LINES = 10
SHARED_MAX_LINES = 500
# in this order, each once: the comment lines that open the stages of every run_*.py main()
STAGES = (
    "validate",
    "set up the run",
    "load raw data",
    "tokenizer|processor",
    "preprocess",
    "model",
    "trainer",
    "train",
)
STAGE_OF = {word: index for index, stage in enumerate(STAGES) for word in stage.split("|")}
STAGE_COMMENT = re.compile(
    r"#\s*(" + "|".join(sorted(STAGE_OF, key=len, reverse=True)) + r")\b"
)  # `trainer` is not `train`
FIRST_CALLS = ("parse_args", "raise_if_problems", "setup_run")

# violations in the code today (see the module docstring)
KNOWN_LONG_CLOSURES: dict[str, str] = {}
KNOWN_LONG_MODULES: dict[str, str] = {}


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def main_of(path: Path) -> ast.FunctionDef:
    mains = [node for node in tree(path).body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert mains, f"{name(path)}: no top-level main()"
    return mains[0]


def call_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def comment_lines(path: Path, function: ast.FunctionDef) -> list[tuple[int, str]]:
    """(line, text) of the lines inside `function` that hold only a comment."""
    with tokenize.open(path) as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    source = path.read_text(encoding="utf-8").splitlines()
    return [
        (token.start[0], token.string)
        for token in tokens
        if token.type == tokenize.COMMENT
        and function.lineno <= token.start[0] <= function.end_lineno
        and source[token.start[0] - 1].lstrip().startswith("#")
    ]


def stage_comments(path: Path, function: ast.FunctionDef) -> list[tuple[int, str, int]]:
    """(line, text, stage index) of the stage comments, in the order they appear."""
    found = []
    for line, text in comment_lines(path, function):
        match = STAGE_COMMENT.match(text)
        if match:
            found.append((line, text, STAGE_OF[match.group(1)]))
    return found


def project_module(dotted_name: str) -> str | None:
    """The project module that `dotted_name` (a module, or a name inside one) belongs to: its longest known prefix."""
    parts = dotted_name.split(".")
    return next((m for m in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if m in PROJECT), None)


def project_imports(node: ast.AST) -> list[tuple[int, str]]:
    """(line, project module) for every import of a project module in `node`, at any depth; `from zhtrain.data
    import packing` imports zhtrain.data.packing, `from zhtrain.data.files import find_column` zhtrain.data.files."""
    found = []
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            modules = [project_module(alias.name) for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            modules = [project_module(f"{child.module}.{alias.name}") for alias in child.names]
        else:
            continue
        found += [(child.lineno, m) for m in dict.fromkeys(modules) if m]
    return found


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def functions_in(node: ast.AST, outer: tuple[str, ...] = ()):
    """(names of the enclosing functions, function node) for every function in `node`, methods included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, FUNCTIONS):
            yield outer, child
            yield from functions_in(child, (*outer, child.name))
        else:
            yield from functions_in(child, outer)


def marked(ids: list[str], known: dict[str, str]) -> list:
    return [pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=known[i])) if i in known else i for i in ids]


# ---- run_*.py main() --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_main_is_short(script):
    main = main_of(script)
    length = main.end_lineno - main.lineno + 1
    assert length <= MAIN_MAX_LINES, (
        f"{name(script)}:{main.lineno} main() is {length} lines (limit {MAIN_MAX_LINES}): move a stage's work into "
        "a function"
    )


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_main_stage_comments_in_order(script):
    main = main_of(script)
    found = stage_comments(script, main)
    expected = "\n".join("  " + " or ".join(f"# {word}" for word in stage.split("|")) for stage in STAGES)
    got = "\n".join(f"  {name(script)}:{line}: {text}" for line, text, _ in found) or "  none"
    assert [stage for _, _, stage in found] == list(range(len(STAGES))), (
        f"{name(script)}:{main.lineno} main(): the stage comments should be, in this order, each once:\n{expected}\n"
        f"found:\n{got}"
    )


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_main_parses_validates_sets_up_first_and_ends_in_train_evaluate_predict(script):
    main = main_of(script)
    calls = []  # the outermost call of each statement that makes one (ast.walk goes breadth-first)
    for statement in main.body:
        call = next((node for node in ast.walk(statement) if isinstance(node, ast.Call)), None)
        if call is not None:
            calls.append((call.lineno, call_name(call)))
    first = [called for _, called in calls[: len(FIRST_CALLS)]]
    assert first == list(FIRST_CALLS), (
        f"{name(script)}:{main.lineno} main() should first call {', '.join(FIRST_CALLS)}; its first calls are: "
        + ", ".join(f"{called} (line {line})" for line, called in calls[: len(FIRST_CALLS)])
    )
    train_lines = [line for line, _, stage in stage_comments(script, main) if stage == len(STAGES) - 1]
    tail = [
        node.lineno
        for node in ast.walk(main)
        if isinstance(node, ast.Call) and call_name(node) == "train_evaluate_predict"
    ]
    assert tail and train_lines and tail[0] > train_lines[0], (
        f"{name(script)}:{main.lineno} main() should call train_evaluate_predict in its `# train` stage "
        f"(train_evaluate_predict at lines {tail or 'none'}, `# train` at {train_lines or 'none'})"
    )


# ---- the same role has the same name and convention in every run_*.py ---------------------------------------------

# the argument objects, in the order every role function takes those it needs (before any other parameter)
ARGUMENT_ORDER = (
    "model_args", "data_args", "image_args", "task_args", "finetuning_args", "generation_args", "training_args",
)  # fmt: skip
IMAGE_SCRIPTS = ("run_clip.py", "run_image_captioning.py")  # they load a processor (tokenizer + image processor)


def roles_of(script: Path) -> dict[str, str]:
    """role -> the name of the function that plays it in `script`."""
    loader = "load_processor" if script.name in IMAGE_SCRIPTS else "load_tokenizer_and_config"
    return {
        "configure the training arguments": "configure_training_args",
        "load the tokenizer (or processor)": loader,
        "load the model": "load_model",
    }


def top_level_functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree(path).body if isinstance(node, ast.FunctionDef)}


def parameters(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.posonlyargs + function.args.args]


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_every_role_has_its_name_and_main_calls_it(script):
    functions = top_level_functions(script)
    called = {call_name(node) for node in ast.walk(main_of(script)) if isinstance(node, ast.Call)}
    missing = [f"{function} ({role})" for role, function in roles_of(script).items() if function not in functions]
    assert not missing, f"{name(script)} defines no {', '.join(missing)}"
    not_called = [f for f in [*roles_of(script).values(), "train_evaluate_predict"] if f not in called]
    assert not not_called, f"{name(script)}: main() does not call {', '.join(not_called)}"


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_role_functions_take_the_argument_objects_first_in_one_order(script):
    functions = top_level_functions(script)
    for function in roles_of(script).values():
        params = parameters(functions[function])
        arguments = [p for p in params if p in ARGUMENT_ORDER]
        where = f"{name(script)}:{functions[function].lineno} {function}({', '.join(params)})"
        assert params[: len(arguments)] == arguments == sorted(arguments, key=ARGUMENT_ORDER.index), (
            f"{where}: the argument objects come first, in the order {', '.join(ARGUMENT_ORDER)}"
        )
        if function.startswith("load_"):
            assert params[0] == "model_args", f"{where}: a loader takes model_args first"
    configure = parameters(functions["configure_training_args"])
    assert set(configure) <= set(ARGUMENT_ORDER) and configure[-1] == "training_args", (
        f"{name(script)}: configure_training_args takes argument objects only, training_args last: {configure}"
    )


@pytest.mark.parametrize("script", [p for p in RUN_SCRIPTS if p.name not in IMAGE_SCRIPTS], ids=name)
def test_load_tokenizer_and_config_returns_tokenizer_and_config(script):
    function = top_level_functions(script)["load_tokenizer_and_config"]
    returns = [node for node in ast.walk(function) if isinstance(node, ast.Return)]
    shapes = [ast.unparse(node.value) for node in returns]
    assert shapes == ["(tokenizer, config)"], f"{name(script)}: load_tokenizer_and_config returns {shapes}"


def assigned_training_args(node: ast.AST) -> list[ast.Assign]:
    """The statements in `node` that set an attribute of training_args."""
    return [
        child
        for child in ast.walk(node)
        if isinstance(child, ast.Assign)
        and any(
            isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "training_args"
            for t in child.targets
        )
    ]


def is_log_line(statement: ast.stmt) -> bool:
    """`logger.info(...)`, `logger.warning(...)`: a statement that is a call of a logger method."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and ast.unparse(call.func.value) == "logger"
    )


@pytest.mark.parametrize("script", RUN_SCRIPTS, ids=name)
def test_only_configure_training_args_changes_them_and_it_logs_every_change(script):
    elsewhere = [
        f"{name(script)}:{assign.lineno} {function.name}() sets {ast.unparse(assign.targets[0])}"
        for function in top_level_functions(script).values()
        if function.name != "configure_training_args"
        for assign in assigned_training_args(function)
    ]
    assert not elsewhere, "training arguments changed outside configure_training_args:\n  " + "\n  ".join(elsewhere)
    configure = top_level_functions(script)["configure_training_args"]
    silent = [
        f"{name(script)}:{assign.lineno} {ast.unparse(assign)}"
        for branch in [configure, *(n for n in ast.walk(configure) if isinstance(n, ast.If))]
        for assign in (s for s in branch.body if s in assigned_training_args(branch))
        if not any(is_log_line(statement) for statement in branch.body)
    ]
    assert not silent, "changes to the training arguments that no log line reports:\n  " + "\n  ".join(silent)


def test_the_role_checks_see_the_roles():
    """The checks above are not vacuous: every script has a configure_training_args, and some of them change
    training arguments (each under an `if` that logs it)."""
    changes = [
        a for p in RUN_SCRIPTS for a in assigned_training_args(top_level_functions(p)["configure_training_args"])
    ]
    assert len(changes) >= 3


# ---- imports ----------------------------------------------------------------------------------------------------


def test_the_root_holds_only_entry_points_and_the_modules_the_design_names():
    others = sorted(p.name for p in TOP if not p.name.startswith("run_") and p.name not in ROOT_MODULES)
    assert not others, f"shared modules at the root (move them into zhtrain/): {others}"


def test_module_names_are_unique_across_the_top_level_and_scripts():
    clashes = sorted({p.stem for p in TOP} & {p.stem for p in SCRIPTS})
    assert not clashes, f"modules of the same name at the top level and in scripts/: {clashes}"


def test_no_import_cycle_among_the_project_modules():
    edges = {module: {} for module in PROJECT}  # module -> {imported module: line}
    for module, path in PROJECT.items():
        for line, imported in project_imports(tree(path)):
            if imported != module:
                edges[module].setdefault(imported, line)

    def cycle_from(start: str) -> list[str] | None:
        """The shortest import chain from `start` back to itself (breadth-first)."""
        paths, seen = [[start]], set()
        while paths:
            path = paths.pop(0)
            for imported in edges[path[-1]]:
                if imported == start:
                    return path
                if imported not in seen:
                    seen.add(imported)
                    paths.append([*path, imported])
        return None

    cycles = {}
    for module in PROJECT:
        cycle = cycle_from(module)
        if cycle:
            cycles.setdefault(frozenset(cycle), cycle)
    described = [
        " -> ".join(f"{name(PROJECT[a])}:{edges[a][b]} imports {b}" for a, b in zip(cycle, [*cycle[1:], cycle[0]]))
        for cycle in cycles.values()
    ]
    assert not described, "import cycles among the project modules:\n  " + "\n  ".join(described)


def test_no_project_import_inside_a_function():
    """Third-party imports may wait for the function that needs them; the project's own modules are imported at the
    top, where the import graph (and its cycles) can be seen."""
    violations = set()
    for path in CODE + SCRIPTS + BENCHMARKS:
        for outer, function in functions_in(tree(path)):
            if not outer:  # a nested function's imports are reported once, under its outermost function
                violations |= {
                    f"{name(path)}:{line} {function.name}() imports {imported}"
                    for line, imported in project_imports(function)
                }
    assert not violations, "project modules imported inside functions:\n  " + "\n  ".join(sorted(violations))


# ---- functions and classes --------------------------------------------------------------------------------------

CLOSURES = {
    f"{name(path)}:{'.'.join(outer)}.{node.name}": (path, node)
    for path in CODE
    for outer, node in functions_in(tree(path))
    if outer
}


@pytest.mark.parametrize("closure", marked(sorted(CLOSURES), KNOWN_LONG_CLOSURES))
def test_nested_functions_are_short(closure):
    path, node = CLOSURES[closure]
    length = node.end_lineno - node.lineno + 1
    outer = closure.split(":")[1].rsplit(".", 1)[0]
    assert length <= CLOSURE_MAX_LINES, (
        f"{name(path)}:{node.lineno} {outer}() nests {node.name}(), {length} lines (limit {CLOSURE_MAX_LINES}): "
        "make it a module-level function"
    )


def test_there_are_closures_to_check():
    assert CLOSURES  # e.g. run_seq2seq_ptuning.main's compute_metrics: the check above is not vacuous


def transformers_names(module: ast.Module) -> dict[str, str]:
    """Local name -> transformers name, for `from transformers[.x] import A [as B]`; "" for the module itself."""
    names = {}
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "transformers":
            names.update({alias.asname or alias.name: alias.name for alias in node.names})
        elif isinstance(node, ast.Import):
            names.update({alias.asname or alias.name: "" for alias in node.names if alias.name == "transformers"})
    return names


def test_no_class_takes_the_name_of_the_transformers_class_it_subclasses():
    violations = []
    for path in CODE + SCRIPTS + BENCHMARKS:
        local = transformers_names(tree(path))
        for node in ast.walk(tree(path)):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                if isinstance(base, ast.Name):
                    original = local.get(base.id)
                elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id in local:
                    original = base.attr if local[base.value.id] == "" else None
                else:
                    original = None
                if original == node.name:
                    violations.append(f"{name(path)}:{node.lineno} class {node.name}({ast.unparse(base)})")
    assert not violations, "classes named like the transformers class they subclass:\n  " + "\n  ".join(violations)


# ---- modules ----------------------------------------------------------------------------------------------------


def test_every_module_has_a_docstring():
    missing = [f"{name(path)}:1" for path in CODE + SCRIPTS if not ast.get_docstring(tree(path))]
    assert not missing, "modules without a module docstring: " + ", ".join(missing)


@pytest.mark.parametrize("module", marked([name(p) for p in SHARED], KNOWN_LONG_MODULES))
def test_shared_modules_are_at_most_500_lines(module):
    length = len((ROOT / module).read_text(encoding="utf-8").splitlines())
    assert length <= SHARED_MAX_LINES, f"{module} is {length} lines (limit {SHARED_MAX_LINES}): split it by concept"


def test_the_checks_see_the_project():
    assert len(RUN_SCRIPTS) == 5 and "zhtrain.data.images" in PROJECT and "make_demo_data" in PROJECT and BENCHMARKS
    assert "zhtrain.data.packing" in dict(project_imports(tree(ROOT / "run_clm.py"))).values()

"""The docs hold to what the code is: README.md and README_zh.md agree, every task page has the same sections, and
every file, module, function and link the docs name exists.

Pure file reading: code is read with `ast`, never imported. A backticked name is checked when it is a path into the
repository (`zhtrain/...`, `examples/...`, a root file such as `run_clm.py`) or a dotted name whose first part is a
project module (`zhtrain.metrics.rouge_bleu`, `run_clm.find_text_sources`); placeholders (`<`, `*`, `{`, `...`)
are skipped. Inline code only: commands in fenced blocks are compared between the READMEs, not resolved.
"""

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_ZH = ROOT / "README_zh.md"
DOCS = ROOT / "docs"
ALL_DOCS = [README, README_ZH, *sorted(DOCS.glob("*.md")), ROOT / "BENCHMARKS.md"]
TASK_PAGES = ["classification.md", "clm.md", "seq2seq.md", "clip.md", "captioning.md", "serving.md"]
TASK_SECTIONS = ["Quick start", "Data format", "Arguments that matter", "Outputs", "Multi-GPU", "Troubleshooting"]
README_MAX_LINES = 300
LAYOUT_SECTION = "how-the-code-is-laid-out"
# the folders a backticked path may start with; anything else (`outputs/`, `demo/`, `data/`) is the user's or a run's
REPO_FOLDERS = ("zhtrain", "scripts", "examples", "docs", "benchmarks", "tests", "ds_configs")
ROOT_FILES = ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt")

PLACEHOLDER = re.compile(r"[<*{]|\.\.\.")
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
FILE_SUFFIX = re.compile(r"\.(py|md|sh|json|jsonl|yaml|yml|html|txt|csv|tsv|toml|png|safetensors)$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR_TAG = re.compile(r'<a id="([^"]+)"></a>')


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def split_fences(path: Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(the prose lines, with fenced blocks blanked; the fenced blocks as (language, lines))"""
    prose, blocks, block = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if block is None:
                block = (line[3:].strip(), [])
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block[1].append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def inline_code(path: Path) -> list[str]:
    """The code spans of the prose; a span may wrap onto the next line of its paragraph, as markdown allows."""
    prose, _ = split_fences(path)
    paragraphs = re.split(r"\n\s*\n", "\n".join(prose))
    return [" ".join(span.split()) for text in paragraphs for span in re.findall(r"`([^`]+)`", text)]


def headings(path: Path, level: str = "##") -> list[str]:
    prose, _ = split_fences(path)
    return [line[len(level) + 1 :].strip() for line in prose if line.startswith(level + " ")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept), spaces to -."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path)
    found, seen = set(), {}
    for line in prose:
        found.update(ANCHOR_TAG.findall(line))
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def bash_commands(path: Path) -> set[str]:
    """Every command line of the bash blocks, comments and continuation lines folded, spaces normalised."""
    _, blocks = split_fences(path)
    commands = set()
    for language, lines in blocks:
        if language not in ("bash", "sh", "shell"):
            continue
        for line in "\n".join(lines).replace("\\\n", " ").splitlines():
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command:
                commands.add(command)
    return commands


def section_lines(path: Path, section_slug: str) -> list[str]:
    """The prose lines of the `##` section with this anchor (its slug or the `<a id>` just above it)."""
    prose, _ = split_fences(path)
    inside, lines = False, []
    for index, line in enumerate(prose):
        if line.startswith("## "):
            inside = slug(line[3:]) == section_slug or zh_anchor(prose, index) == section_slug
        elif inside:
            lines.append(line)
    return lines


def zh_anchor(prose: list[str], index: int) -> str | None:
    """The `<a id="...">` on the last non-blank line before line `index`, if there is one."""
    for line in reversed(prose[:index]):
        if line.strip():
            match = ANCHOR_TAG.fullmatch(line.strip())
            return match.group(1) if match else None
    return None


# ---- code, read with ast ----

PROJECT_MODULES = (
    {"zhtrain"}
    | {p.stem for p in ROOT.glob("*.py") if p.name != "conftest.py"}
    | {p.stem for p in (ROOT / "scripts").glob("*.py")}
)


def module_file(parts: list[str]) -> Path | None:
    if parts[0] == "zhtrain":
        base = ROOT.joinpath(*parts)
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
    elif len(parts) == 1:
        candidates = [ROOT / f"{parts[0]}.py", ROOT / "scripts" / f"{parts[0]}.py"]
    else:
        return None
    return next((p for p in candidates if p.is_file()), None)


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def defined(scope: ast.AST, attribute: str) -> ast.AST | None:
    """The function, class or assigned name `attribute` defined at the top of `scope` (a module or a class)."""
    for node in getattr(scope, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attribute:
            return node
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            return node
    return None


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        path = module_file(parts[:length])
        if path is not None:
            break
    else:
        return False
    scope: ast.AST | None = parsed(path)
    for attribute in parts[length:]:
        scope = defined(scope, attribute)
        if scope is None:
            return False
    return True


def repository_path(span: str) -> str | None:
    """`span` as a path into the repository, or None when it names something else (a flag, a user's file)."""
    if any(c.isspace() for c in span) or PLACEHOLDER.search(span) or "://" in span:
        return None
    if span.split("/")[0] in REPO_FOLDERS and (span.count("/") or span.endswith("/")):
        return span.rstrip("/")
    if "/" not in span and (span in ROOT_FILES or re.fullmatch(r"[\w.-]+\.(py|md)", span)):
        return span
    return None


def project_name(span: str) -> str | None:
    if PLACEHOLDER.search(span) or FILE_SUFFIX.search(span) or not DOTTED.fullmatch(span):
        return None
    return span if span.split(".")[0] in PROJECT_MODULES else None


# ---- the tests ----


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move detail into docs/ (at most {README_MAX_LINES})"
    )


@pytest.mark.parametrize(("path", "other"), [(README, README_ZH), (README_ZH, README)], ids=["en->zh", "zh->en"])
def test_readmes_link_each_other_at_the_top(path, other):
    top = "\n".join(path.read_text(encoding="utf-8").splitlines()[:10])
    assert f"]({other.name})" in top, f"{path.name}: no link to {other.name} in its first 10 lines"


def test_readmes_have_the_same_sections_in_the_same_order():
    english = [slug(h) for h in headings(README)]
    prose, _ = split_fences(README_ZH)
    chinese = [zh_anchor(prose, i) for i, line in enumerate(prose) if line.startswith("## ")]
    assert len(english) >= 5, f"README.md has only {len(english)} ## sections"
    assert chinese == english, (
        'each "## " heading of README_zh.md follows <a id="..."></a> naming the README.md section it translates, '
        f"in the same order.\nREADME.md:    {english}\nREADME_zh.md: {chinese}"
    )


def test_readmes_show_the_same_commands():
    english, chinese = bash_commands(README), bash_commands(README_ZH)
    assert english, "README.md has no ```bash block"
    assert english == chinese, (
        f"only in README.md: {sorted(english - chinese)}\nonly in README_zh.md: {sorted(chinese - english)}"
    )


def test_readme_links_every_task_page():
    text = README.read_text(encoding="utf-8")
    missing = [page for page in TASK_PAGES if f"](docs/{page})" not in text]
    assert not missing, f"README.md's scripts table links no page for: {missing}"


@pytest.mark.parametrize("page", TASK_PAGES)
def test_task_page_has_the_six_sections_in_order(page):
    path = DOCS / page
    assert path.is_file(), f"docs/{page} is missing"
    assert headings(path) == TASK_SECTIONS, f"docs/{page}: ## sections {headings(path)}, expected {TASK_SECTIONS}"


@pytest.mark.parametrize("path", ALL_DOCS, ids=name)
def test_backticked_paths_exist(path):
    named = {p for p in map(repository_path, inline_code(path)) if p}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{name(path)} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", ALL_DOCS, ids=name)
def test_backticked_project_names_resolve(path):
    names = {n for n in map(project_name, inline_code(path)) if n}
    broken = sorted(n for n in names if not resolves(n))
    assert not broken, f"{name(path)} names what the code does not define: {broken}"


@pytest.mark.parametrize("path", ALL_DOCS, ids=name)
def test_links_between_docs_point_to_files_and_anchors_that_exist(path):
    prose, _ = split_fences(path)
    broken = []
    for target in (t for line in prose for t in LINK.findall(line)):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading in {linked.name})")
    assert not broken, f"{name(path)}: broken links {broken}"


@pytest.mark.parametrize("path", [README, README_ZH], ids=name)
def test_layout_section_lists_every_zhtrain_module_and_nothing_else(path):
    section = section_lines(path, LAYOUT_SECTION)
    assert section, f"{path.name} has no section {LAYOUT_SECTION!r}"
    spans = {s.rstrip("/") for line in section for s in re.findall(r"`([^`]+)`", line)}
    listed = {s for s in spans if s.startswith("zhtrain/")}
    modules = {name(p) for p in (ROOT / "zhtrain").rglob("*.py") if p.name != "__init__.py"}
    packages = {name(p.parent) for p in (ROOT / "zhtrain").rglob("__init__.py") if p.parent != ROOT / "zhtrain"}
    assert not (modules | packages) - listed, (
        f"{path.name}'s layout leaves out {sorted((modules | packages) - listed)}"
    )
    assert not [s for s in listed if not (ROOT / s).exists()], f"{path.name}'s layout names what does not exist"
    folders = {f for f in REPO_FOLDERS if f != "zhtrain"}
    assert folders <= spans, f"{path.name}'s layout leaves out {sorted(folders - spans)}"

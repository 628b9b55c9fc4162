"""The repository-wide requirement check (spec: conventions.md, CONV-001..003).

Theory of operation: requirement *definitions* are read from ``spec/*.md``,
*citations* from the ``req(...)`` pytest markers in the Python files under
``tests/`` and ``conformance/`` (by AST, so an ID inside a string is not a
citation), *retired* IDs from the table in ``spec/requirement-ids.md`` and *code
references* from ``# [ID]`` comments under ``dhruva/`` and ``conformance/``.
The checks then fail, listing every offender at once, when

* an ID is defined twice, or a retired ID is defined again (CONV-001, CONV-002);
* a MUST requirement has no citing test, or a test cites an ID that is not
  defined (CONV-003);
* a code comment names an ID that is not defined.

A definition is a bracketed ID at the start of a paragraph, a list item, a
table cell or a sentence, outside code; its text runs to the next definition or the
end of the paragraph, list item or table cell (conventions.md, "Requirements
and their IDs").  The parser is tested on an inline sample below so that the
checker itself can fail.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "spec"
HISTORY_FILE = "requirement-ids.md"
CITING_DIRS = ("tests", "conformance")
COMMENT_DIRS = ("dhruva", "conformance")

ID_PATTERN = r"[A-Z][A-Z0-9]*-\d{3,}"
ID_RE = re.compile(rf"^{ID_PATTERN}$")
# A bracketed ID at the start of a block or of a sentence, optionally in bold.
# The start of a wrapped line does not count: a reference such as "the cases
# of [IDX-002]" often wraps there.  Code spans are blanked out before this runs.
DEFINITION_RE = re.compile(
    rf"(?:^|(?:(?<=[.!?])|(?<=[.!?][)\"'*]))\s+)(?:\*\*)?\[({ID_PATTERN})\](?:\*\*)?"
)
MUST_RE = re.compile(r"\bMUST\b")
ID_ONLY_CELL_RE = re.compile(rf"^(?:\*\*)?\[{ID_PATTERN}\](?:\*\*)?$")
CODE_SPAN_RE = re.compile(r"(`+).*?\1", re.DOTALL)
FENCE_RE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})")
LIST_ITEM_RE = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
HEADING_RE = re.compile(r"^[ ]{0,3}#{1,6}(?:[ \t]|$)")
RETIRED_ROW_RE = re.compile(rf"^\|\s*`({ID_PATTERN})`\s*\|", re.MULTILINE)
COMMENT_REF_RE = re.compile(rf"\[({ID_PATTERN})\]")


@dataclass(frozen=True)
class Definition:
    """A requirement defined in the spec: its ID, where, and whether it is a MUST."""

    req_id: str
    path: str
    line: int
    text: str

    @property
    def is_must(self) -> bool:
        return MUST_RE.search(self.text) is not None


@dataclass(frozen=True)
class Citation:
    """An ID named by a ``req(...)`` marker or a ``# [ID]`` comment."""

    req_id: str
    path: str
    line: int


# --- parsing the spec ---------------------------------------------------------


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, text) for each block that may hold definitions.

    A block is a paragraph, a list item (marker removed) or a table cell.
    Fenced code is skipped, and so are lines indented four or more spaces that
    do not start a list item (indented code, or an example inside one).
    """
    start = 0
    lines: list[str] = []
    fence: str | None = None

    def flush() -> Iterator[tuple[int, str]]:
        if lines:
            yield start, "\n".join(lines)
        lines.clear()

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.expandtabs(4)
        fence_match = FENCE_RE.match(line)
        if fence is not None:
            closing = fence_match.group(1) if fence_match else ""
            if closing[:1] == fence[0] and len(closing) >= len(fence):
                fence = None
            continue
        if fence_match:
            yield from flush()
            fence = fence_match.group(1)
            continue
        stripped = line.strip()
        if stripped.startswith(">"):
            stripped = stripped.lstrip("> ")
            line = stripped
        if not stripped or HEADING_RE.match(line):
            yield from flush()
            continue
        if stripped.startswith("|"):
            yield from flush()
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", stripped.strip("|"))]
            for index, cell in enumerate(cells):
                if ID_ONLY_CELL_RE.match(cell):
                    # "| [ID] | text |": the rest of the row is the requirement.
                    yield number, " ".join(cells[index:])
                    break
                yield number, cell
            continue
        item = LIST_ITEM_RE.match(line)
        if item:
            yield from flush()
            start = number
            lines.append(line[item.end() :])
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent >= 4 and not lines:
            continue  # indented code block
        if not lines:
            start = number
        lines.append(line)
    yield from flush()


def parse_definitions(text: str, path: str) -> list[Definition]:
    """Return every requirement defined in one Markdown file, in order."""
    definitions: list[Definition] = []
    for first_line, block in _blocks(text):
        block = CODE_SPAN_RE.sub(lambda m: " " * len(m.group(0)), block)
        matches = list(DEFINITION_RE.finditer(block))
        for index, match in enumerate(matches):
            end = matches[index + 1].start() if index + 1 < len(matches) else len(block)
            line = first_line + block.count("\n", 0, match.start(1))
            body = " ".join(block[match.end() : end].split())
            definitions.append(Definition(match.group(1), path, line, body))
    return definitions


def parse_retired(text: str) -> list[str]:
    """Return the IDs in the first column of requirement-ids.md's table of retired IDs."""
    return RETIRED_ROW_RE.findall(text)


# --- parsing the code ---------------------------------------------------------


def parse_citations(source: str, path: str) -> list[Citation]:
    """Return the IDs named by ``req(...)`` calls (``pytest.mark.req``) in a file."""
    citations: list[Citation] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "req":
            continue
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                citations.append(Citation(arg.value, path, arg.lineno))
    return citations


def parse_comment_refs(source: str, path: str) -> list[Citation]:
    """Return the IDs named as ``[ID]`` in comments of one Python file."""
    refs: list[Citation] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            for match in COMMENT_REF_RE.finditer(token.string):
                refs.append(Citation(match.group(1), path, token.start[0]))
    return refs


# --- the checks, as pure functions ----------------------------------------------


def find_duplicates(definitions: Iterable[Definition]) -> list[str]:
    """Return one problem line per ID defined more than once (CONV-001)."""
    seen: dict[str, list[Definition]] = {}
    for definition in definitions:
        seen.setdefault(definition.req_id, []).append(definition)
    return [
        f"{req_id} is defined {len(defs)} times: " + ", ".join(f"{d.path}:{d.line}" for d in defs)
        for req_id, defs in sorted(seen.items())
        if len(defs) > 1
    ]


def find_redefined_retired(definitions: Iterable[Definition], retired: Iterable[str]) -> list[str]:
    """Return one problem line per retired ID that is defined again (CONV-002)."""
    retired_ids = set(retired)
    return [
        f"{d.req_id} ({d.path}:{d.line}) is retired in spec/{HISTORY_FILE} and may not be reused"
        for d in definitions
        if d.req_id in retired_ids
    ]


def find_untested_musts(
    definitions: Iterable[Definition], citations: Iterable[Citation]
) -> list[str]:
    """Return one problem line per MUST requirement no test cites (CONV-003)."""
    cited = {c.req_id for c in citations}
    return [
        f"{d.req_id} ({d.path}:{d.line}) is a MUST requirement and no test cites it"
        for d in definitions
        if d.is_must and d.req_id not in cited
    ]


def find_unknown_citations(
    definitions: Iterable[Definition], citations: Iterable[Citation], what: str = "req() marker"
) -> list[str]:
    """Return one problem line per citation of an ID the spec does not define."""
    defined = {d.req_id for d in definitions}
    problems = []
    for c in citations:
        if not ID_RE.match(c.req_id):
            problems.append(f"{c.path}:{c.line}: {what} names {c.req_id!r}, not a requirement ID")
        elif c.req_id not in defined:
            problems.append(f"{c.path}:{c.line}: {what} cites {c.req_id}, not defined in spec/")
    return problems


# --- reading the repository ------------------------------------------------------


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _python_files(dirs: Iterable[str]) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def repo_definitions() -> list[Definition]:
    return [
        definition
        for path in sorted(SPEC_DIR.glob("*.md"))
        for definition in parse_definitions(path.read_text(encoding="utf-8"), _relative(path))
    ]


def repo_retired() -> list[str]:
    history = SPEC_DIR / HISTORY_FILE
    return parse_retired(history.read_text(encoding="utf-8")) if history.exists() else []


def repo_citations() -> list[Citation]:
    return [
        citation
        for path in _python_files(CITING_DIRS)
        for citation in parse_citations(path.read_text(encoding="utf-8"), _relative(path))
    ]


def repo_comment_refs() -> list[Citation]:
    return [
        ref
        for path in _python_files(COMMENT_DIRS)
        for ref in parse_comment_refs(path.read_text(encoding="utf-8"), _relative(path))
    ]


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


# --- the repository-wide tests ---------------------------------------------------


@pytest.mark.req("CONV-001")
def test_no_requirement_id_is_defined_twice() -> None:
    problems = find_duplicates(repo_definitions())
    assert not problems, _report(problems)


@pytest.mark.req("CONV-002")
def test_no_retired_id_is_defined_again() -> None:
    problems = find_redefined_retired(repo_definitions(), repo_retired())
    assert not problems, _report(problems)


@pytest.mark.req("CONV-003")
def test_every_must_requirement_is_cited_by_a_test() -> None:
    problems = find_untested_musts(repo_definitions(), repo_citations())
    assert not problems, _report(problems)


@pytest.mark.req("CONV-003")
def test_every_cited_id_is_defined() -> None:
    problems = find_unknown_citations(repo_definitions(), repo_citations())
    assert not problems, _report(problems)


def test_every_id_named_in_a_code_comment_is_defined() -> None:
    problems = find_unknown_citations(repo_definitions(), repo_comment_refs(), "comment")
    assert not problems, _report(problems)


def test_the_spec_defines_requirements() -> None:
    # Guards the checks above against passing vacuously, e.g. if the spec moved.
    assert any(d.req_id.startswith("CONV-") for d in repo_definitions())


# --- the checker checked on a sample --------------------------------------------

SAMPLE_SPEC = """\
# Sample

[AB-001] A line-start requirement MUST hold
over two lines.

- [AB-002] A list item SHOULD do this. [AB-003] A sentence start MUST NOT fail.
  A continuation line of AB-003.
- Not a definition: a reference to
  [AB-001] wrapped onto a new line, or (see [AB-002]) mid-sentence.

1. **[AB-004]** A bold ID in a numbered item MAY be used; must is lower case.

| ID | rule |
|---|---|
| [AB-005] A table cell MUST be read | [AB-006] another cell, no keyword |
| [AB-008] | A row whose ID has a cell of its own MUST count |

> [AB-007] A quoted note MUST count.

```text
[AB-100] A fenced example MUST NOT count.
```

    [AB-101] An indented example MUST NOT count.

Inline code `[AB-102] MUST` is not a definition.
[AB-001] Defined again MUST be reported.
"""

SAMPLE_TESTS = """\
import pytest

@pytest.mark.req("AB-001", "AB-003")
def test_one(): ...

@req("AB-999")
def test_two(): ...

pytestmark = [pytest.mark.req("AB 5")]
TEXT = 'req("AB-005") in a string is not a citation'
"""


def test_parser_finds_definitions_in_every_form() -> None:
    definitions = parse_definitions(SAMPLE_SPEC, "sample.md")
    found = [(d.req_id, d.line, d.is_must) for d in definitions]
    assert found == [
        ("AB-001", 3, True),
        ("AB-002", 6, False),
        ("AB-003", 6, True),
        ("AB-004", 11, False),
        ("AB-005", 15, True),
        ("AB-006", 15, False),
        ("AB-008", 16, True),
        ("AB-007", 18, True),
        ("AB-001", 27, True),
    ]
    assert definitions[0].text == "A line-start requirement MUST hold over two lines."
    assert definitions[2].text.endswith("A continuation line of AB-003.")


def test_parser_finds_marker_citations_only() -> None:
    citations = parse_citations(SAMPLE_TESTS, "test_sample.py")
    assert [(c.req_id, c.line) for c in citations] == [
        ("AB-001", 3),
        ("AB-003", 3),
        ("AB-999", 6),
        ("AB 5", 9),
    ]


def test_checks_report_every_problem_in_the_sample() -> None:
    definitions = parse_definitions(SAMPLE_SPEC, "sample.md")
    citations = parse_citations(SAMPLE_TESTS, "test_sample.py")
    assert find_duplicates(definitions) == ["AB-001 is defined 2 times: sample.md:3, sample.md:27"]
    untested = find_untested_musts(definitions, citations)
    assert [line.split()[0] for line in untested] == ["AB-005", "AB-008", "AB-007"]
    unknown = find_unknown_citations(definitions, citations)
    assert unknown == [
        "test_sample.py:6: req() marker cites AB-999, not defined in spec/",
        "test_sample.py:9: req() marker names 'AB 5', not a requirement ID",
    ]
    retired = parse_retired("| ID | retired in | reason |\n|---|---|---|\n| `AB-004` | 0.2 | x |\n")
    assert retired == ["AB-004"]
    assert len(find_redefined_retired(definitions, retired)) == 1


def test_comment_refs_are_read_from_comments_only() -> None:
    source = 'x = "[AB-001]"  # enforces [AB-002]\n# [AB-003] and [AB-004]\n'
    refs = parse_comment_refs(source, "m.py")
    assert [(r.req_id, r.line) for r in refs] == [("AB-002", 1), ("AB-003", 2), ("AB-004", 2)]

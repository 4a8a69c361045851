"""The documentation stays usable: the README is a short user's guide that opens with the two set-up commands,
every `recipe-search` command the documents show parses with the real argument parser, every relative link and
image points at something that exists, and every experiment script and report is indexed."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from recipe_search.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXPERIMENTS = ROOT / "experiments"
MAX_README_LINES = 350
SETUP = ("```sh\n"
         "python3 -m pip install -e '.[demo]' && recipe-search search demo --config experiments/demo-study.yaml --trials 20\n"
         "python3 -m pip install -e '.[test]' && python3 -m pytest -q\n"
         "```\n")

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
OPERATORS = {"&&", "||", ";", "|", "&"}


def _documents() -> list[Path]:
    """README.md, docs/*.md and every Markdown file under experiments/."""
    return [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(EXPERIMENTS.rglob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _recipe_search_args(line: str) -> list[list[str]]:
    """The arguments of each `recipe-search` command on one shell line (a `$ ` prompt, `&&`/`;`/`|` chains,
    environment assignments and `#` comments allowed)."""
    line = line.strip().removeprefix("$ ")
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    out = []
    for words in segments:
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            words = words[1:]
        if words and words[0] == "recipe-search":
            out.append(words[1:])
    return out


def _fenced_command_lines(path: Path) -> list[str]:
    lines = []
    for block in FENCE.findall(path.read_text(encoding="utf-8")):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if "recipe-search " in line:
                lines.append(line)
    return lines


def _index_command_lines() -> list[str]:
    """The command column of experiments/README.md's table (one `<br>` per command)."""
    lines = []
    for row in (EXPERIMENTS / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in row.split(" | ")]
        if row.startswith("| ") and len(cells) == 6 and "recipe-search " in cells[2]:
            for span in INLINE_CODE.findall(cells[2]):
                if "recipe-search " in span:
                    lines.append(span.strip("`"))
    return lines


def _command_cases() -> list[tuple[str, str]]:
    cases = [(_rel(path), line) for path in _documents() for line in _fenced_command_lines(path)]
    cases += [("experiments/README.md (index)", line) for line in _index_command_lines()]
    return cases


def _command_params() -> list:
    """One case per command line, named by its document and position (the lines themselves are long)."""
    count: dict[str, int] = {}
    params = []
    for document, line in _command_cases():
        count[document] = count.get(document, 0) + 1
        params.append(pytest.param(document, line, id=f"{document}#{count[document]}"))
    return params


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move research prose to experiments/reports/"


def test_readme_starts_with_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# recipe-search\n")
    first_block = text.index("```")
    assert text[first_block:].startswith(SETUP), "the first code block is not the two set-up commands"
    assert "\n## " not in text[:first_block], "the set-up commands come before the first section"


def test_documents_show_recipe_search_commands() -> None:
    """The parse test below sees the commands (a regex that found none would pass vacuously)."""
    where = {doc for doc, _ in _command_cases()}
    assert {"README.md", "experiments/README.md (index)", "experiments/reports/dialects.md"} <= where, where
    assert len(_command_cases()) > 30


@pytest.mark.parametrize(("document", "line"), _command_params())
def test_documented_command_parses(document: str, line: str) -> None:
    parser = build_parser()
    commands = _recipe_search_args(line)
    assert commands, f"{document}: no recipe-search command found in {line!r}"
    for args in commands:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{document}: `recipe-search {shlex.join(args)}` does not parse:\n{err.getvalue()}")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub("code", text)
    return LINK.findall(text)


def test_relative_links_and_images_resolve() -> None:
    broken = []
    for doc in _documents():
        for target in _links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{_rel(doc)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(doc)}: {target} (no such heading)")
    assert broken == []


def test_documents_name_no_absolute_paths() -> None:
    """Commands and links are relative to the repository (shared data is ../shared/data/)."""
    for doc in [*_documents(), ROOT / "docs" / "study-config.yaml"]:
        found = re.findall(r"(?<![\w.~])/(?:work|tmp|root|home)/\S*", doc.read_text(encoding="utf-8"))
        assert found == [], f"{_rel(doc)}: {found}"


def test_every_experiment_script_and_report_is_indexed() -> None:
    index = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    scripts = sorted(p.name for p in [*EXPERIMENTS.glob("*.py"), *EXPERIMENTS.glob("*.sh")]
                     if p.suffix == ".sh" or 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))
    assert scripts and [s for s in scripts if f"]({s})" not in index] == []
    modules = sorted(p.name for p in EXPERIMENTS.glob("*.py") if p.name not in scripts)  # the scripts' shared parts
    assert [m for m in modules if f"]({m})" not in index] == []
    reports = sorted(p.name for p in (EXPERIMENTS / "reports").glob("*.md"))
    assert reports and [r for r in reports if f"](reports/{r}" not in index] == []
    assert [r for r in reports if f"](experiments/reports/{r}" not in readme] == [], "each report: one line and a link"

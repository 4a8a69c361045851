"""Recipes in the dialects people publish, read into a Recipe that resolves as their own tool would.

- ``tensor-type-file``: llama-quantize's ``--tensor-type-file`` (``regex=type`` tokens, whitespace-separated);
- ``args``: a llama-quantize command line with ``--tensor-type regex=type`` arguments;
- ``custom-q``: ik_llama.cpp's ``--custom-q "regex=type,regex=type"`` (a value or a command line);
- ``gguf-tool-suite``: Thireus' GGUF-Tool-Suite ``.recipe`` (``^regex$=type`` lines, ``#`` comments, footer);
- ``shell``: a script keeping ``regex=type`` lines in a variable or heredoc, flattened into ``--custom-q``
  or ``--tensor-type``.

Every one of these tools takes the first rule whose regex is *found* in the tensor name (std::regex_search),
in the order given, which is the Recipe's own model. The differences converted here: mainline
llama-quantize lower-cases each pattern; ik_llama.cpp keeps the case and its rules also override
``--token-embedding-type``/``--output-tensor-type``; tensors no rule names take the file type given on the
command line (mixture unless ``--pure``), or ``unmatched`` where the source names none.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeSearchError
from ..formats.ggml_types import FileType, parse_file_type, parse_type
from .recipe import Recipe, Rule, Unmatched, check_pattern, load_recipe, recipe_from_dict
from .yaml_file import read_text_file


class Dialect(str, Enum):
    TENSOR_TYPE_FILE = "tensor-type-file"
    ARGS = "args"
    CUSTOM_Q = "custom-q"
    TOOL_SUITE = "gguf-tool-suite"
    SHELL = "shell"
    YAML = "yaml"


#: ik_llama.cpp's ggml types that mainline llama.cpp lacks (its ggml.h type enum and quantize table).
IK_ONLY_TYPES: frozenset[str] = frozenset({
    "Q6_0", "Q8_KV", "IQ1_BN", "IQ2_BN", "IQ1_KT", "IQ2_KT", "IQ3_KT", "IQ4_KT",
    "IQ2_K", "IQ3_K", "IQ4_K", "IQ5_K", "IQ6_K", "IQ2_KS", "IQ2_KL", "IQ3_KS", "IQ4_KS", "IQ4_KSS", "IQ5_KS",
    "Q4_0_R8", "Q5_0_R4", "Q6_0_R4", "Q8_0_R8", "Q2_K_R4", "Q3_K_R4", "Q4_K_R4", "Q5_K_R4", "Q6_K_R4",
    "IQ2_XXS_R4", "IQ2_XS_R4", "IQ2_S_R4", "IQ3_XXS_R4", "IQ3_S_R4", "IQ4_XS_R8", "IQ4_NL_R4", "IQ1_S_R4",
    "IQ1_M_R4", "IQ2_BN_R4", "IQ2_K_R4", "IQ3_K_R4", "IQ4_K_R4", "IQ5_K_R4", "IQ4_KS_R4", "IQ5_KS_R4",
    "Q8_KV_R8", "Q8_K_R8", "Q8_K_R16", "BF16_R16",
})

#: the resolution each tool applies, recorded in the recipe's provenance
_SEMANTICS = {
    "llama.cpp": "first match wins, regex search (unanchored), patterns lower-cased; "
                 "--token-embedding-type/--output-tensor-type take precedence over the patterns",
    "ik_llama.cpp": "first match wins, regex search (unanchored), case kept; the rules also override "
                    "--token-embedding-type/--output-tensor-type",
}

#: ik_llama.cpp's own file types (its quantize table): the types above and their K/KT/R mixtures
_IK_FILE_TYPE = re.compile(r"IQ\d_K\w*|IQ\d_\w+_R\d+|Q\d_K\w*_R\d+|Q\d_0_R\d+|Q6_0|IQ\d_BN\w*")

DEFAULT_UNMATCHED = "Q8_0"

_TOKEN = re.compile(r"^(?P<pattern>[^=\s]+)=(?P<type>[^=\s,]+)$")
_BLOCK_LINE = re.compile(r"^\s*[^\s=#][^\s=]*=[$\w{}^]+\s*$")


@dataclass
class Entry:
    """One ``regex=type`` as read: where it was and the comment heading it."""

    pattern: str
    type_name: str
    line: int
    comment: str | None = None


@dataclass
class Parsed:
    dialect: Dialect
    tool: str  # "llama.cpp" or "ik_llama.cpp"
    entries: list[Entry]
    comments: dict[int, str] = field(default_factory=dict)
    file_type: str | None = None  # the command line's type argument
    pure: bool = False
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    imatrix: str | None = None
    stated_bpw: float | None = None
    warnings: list[str] = field(default_factory=list)


def _fail(source: str | Path, line: int | None, problem: str) -> RecipeSearchError:
    return RecipeSearchError(f"line {line}: {problem}" if line else problem, source)


# -- splitting text into entries -------------------------------------------------------------------
def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _token_entry(tok: str, line: int, source, comment: str | None = None) -> Entry:
    pattern, sep, type_name = tok.partition("=")
    if not sep or not pattern or not type_name:
        raise _fail(source, line, f"{tok!r} is not regex=type")
    return Entry(pattern, type_name, line, comment)


def _comment_lines(text: str) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """(line number, content) of the non-blank, non-comment lines, and the comments by line."""
    body, comments = [], {}
    for number, raw in enumerate(_lines(text), 1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments[number] = s
        else:
            body.append((number, s))
    return body, comments


def _heading(comments: Mapping[int, str], line: int) -> str | None:
    """The nearest comment above ``line`` (a section heading or a note)."""
    above = [n for n in comments if n < line]
    return comments[max(above)] if above else None


def parse_tensor_type_file(text: str, source) -> Parsed:
    body, comments = _comment_lines(text)
    entries = [_token_entry(tok, n, source, _heading(comments, n)) for n, s in body for tok in s.split()]
    warnings = [f"line {min(comments)}: llama-quantize itself does not skip comments in a --tensor-type-file"
                ] if comments else []
    return Parsed(Dialect.TENSOR_TYPE_FILE, "llama.cpp", entries, comments, warnings=warnings)


def parse_tool_suite(text: str, source) -> Parsed:
    body, comments = _comment_lines(text)
    entries = []
    for n, s in body:
        m = _TOKEN.match(s)
        if not m:
            raise _fail(source, n, f"{s!r} is not a regex=type line")
        entries.append(Entry(m["pattern"], m["type"], n, _heading(comments, n)))
    stated = None
    for c in comments.values():
        m = re.search(r"Average BPW:\s*([0-9.]+)", c)
        if m:
            stated = float(m[1])
    return Parsed(Dialect.TOOL_SUITE, "ik_llama.cpp", entries, comments, stated_bpw=stated)


def _join_continuations(text: str) -> list[tuple[int, str]]:
    """Logical command lines (backslash continuations joined), each with its first line number."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(_lines(text), 1):
        if not buf:
            start = number
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        out.append((start, buf))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def _split_custom_q(value: str, line: int, source) -> list[Entry]:
    """ik_llama.cpp splits the value at every comma (a regex quantifier like {1,2} cannot go in)."""
    return [_token_entry(item.strip(), line, source) for item in value.split(",") if item.strip()]


def parse_command(text: str, source) -> Parsed:
    """A llama-quantize (mainline or ik_llama.cpp) command line, or a bare ``--custom-q`` value."""
    logical = [(n, s) for n, s in _join_continuations(text) if s.strip() and not s.strip().startswith("#")]
    command = [(n, s) for n, s in logical if "--tensor-type" in s or "--custom-q" in s or "quantize" in s]
    if not command:
        if len(logical) == 1 and "," in logical[0][1] and "=" in logical[0][1]:
            n, s = logical[0]
            return Parsed(Dialect.CUSTOM_Q, "ik_llama.cpp", _split_custom_q(s.strip().strip("'\""), n, source))
        raise _fail(source, None, "no llama-quantize command, --tensor-type or --custom-q found")
    n, line = command[-1]
    try:
        args = shlex.split(line, comments=True)
    except ValueError as err:
        raise _fail(source, n, f"cannot split the command line: {err}") from None
    return _from_args(args, n, source)


def _from_args(args: list[str], n: int, source, need_rules: bool = True) -> Parsed:
    """Read llama-quantize's options and positional arguments (from the program name on, when there is one)."""
    entries: list[Entry] = []
    p = Parsed(Dialect.ARGS, "llama.cpp", entries)
    positional: list[str] = []
    takes_value = {"--imatrix", "--token-embedding-type", "--output-tensor-type", "--tensor-type", "--custom-q",
                   "--tensor-type-file", "--include-weights", "--exclude-weights", "--override-kv", "--prune-layers",
                   "--attn-q-type", "--attn-k-type", "--attn-v-type", "--attn-qkv-type", "--attn-output-type",
                   "--ffn-gate-type", "--ffn-down-type", "--ffn-up-type", "--repack-pattern",
                   "--per-layer-token-embedding-type"}
    start = next((k for k, a in enumerate(args) if re.search(r"quantize\b", Path(a).name)), None)
    i = 0 if start is None else start + 1
    end = next((k for k in range(i, len(args)) if args[k] in _SHELL_OPERATORS), len(args))
    args = args[:end]
    while i < len(args):
        a = args[i]
        if a in takes_value:
            if i + 1 >= len(args):
                raise _fail(source, n, f"{a} without a value")
            v = args[i + 1]
            if a == "--tensor-type":
                entries.append(_token_entry(v, n, source))
            elif a == "--custom-q":
                p.dialect, p.tool = Dialect.CUSTOM_Q, "ik_llama.cpp"
                entries.extend(_split_custom_q(v, n, source))
            elif a == "--tensor-type-file":
                raise _fail(source, n, f"the command reads --tensor-type-file {v}: import that file instead")
            elif a == "--token-embedding-type":
                p.token_embedding_type = v
            elif a == "--output-tensor-type":
                p.output_tensor_type = v
            elif a == "--imatrix":
                p.imatrix = Path(v).name
            elif a.startswith(("--attn-", "--ffn-")):
                raise _fail(source, n, f"{a} (ik_llama.cpp) is not supported: write it as a --custom-q rule")
            i += 2
            continue
        if a == "--pure":
            p.pure = True
        elif a == "--leave-output-tensor":
            p.warnings.append(f"line {n}: --leave-output-tensor (output.weight kept unquantized) is not carried over; "
                              "give the recipe an output_tensor_type")
        elif not a.startswith("-"):
            positional.append(a)
        i += 1
    if p.dialect is Dialect.CUSTOM_Q and any(a == "--tensor-type" for a in args):
        raise _fail(source, n, "both --custom-q (ik_llama.cpp) and --tensor-type (llama.cpp) on one command line")
    # model [out] type [threads]
    if len(positional) >= 4 or (len(positional) == 3 and not _threads(positional[2])):
        p.file_type = positional[2]
    elif len(positional) >= 2:
        p.file_type = positional[1]
    if need_rules and not entries:
        raise _fail(source, n, "the command line has no --tensor-type or --custom-q rule")
    return p


_SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "2>&1"}


def _threads(arg: str) -> bool:
    return arg.isdigit() or arg.startswith("$(")


# -- shell scripts ---------------------------------------------------------------------------------
_ASSIGN_OPEN = re.compile(r"""^\s*(?:export\s+|local\s+|readonly\s+)?(?P<var>[A-Za-z_]\w*)=(?P<q>["'])(?P<rest>.*)$""")
_HEREDOC = re.compile(r"""<<-?\s*(?P<q>['"]?)(?P<tag>\w+)(?P=q)""")


def _blocks(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """(variable or heredoc tag, [(line, content)]) for each multi-line string or heredoc in a script."""
    lines = _lines(text)
    out, i = [], 0
    while i < len(lines):
        m = _ASSIGN_OPEN.match(lines[i])
        h = _HEREDOC.search(lines[i]) if not m else None
        if m and m["q"] not in m["rest"]:
            body, j = [], i + 1
            while j < len(lines) and m["q"] not in lines[j]:
                body.append((j + 1, lines[j]))
                j += 1
            if j < len(lines):
                closing = lines[j].split(m["q"], 1)[0]
                if closing.strip():
                    body.append((j + 1, closing))
            first = m["rest"]
            if first.strip():
                body.insert(0, (i + 1, first))
            out.append((m["var"], body))
            i = j + 1
            continue
        if h:
            body, j = [], i + 1
            while j < len(lines) and lines[j].strip() != h["tag"]:
                body.append((j + 1, lines[j]))
                j += 1
            owner = re.match(r"\s*(?:export\s+|local\s+)?([A-Za-z_]\w*)=", lines[i])
            out.append((owner[1] if owner else h["tag"], body))
            i = j + 1
            continue
        i += 1
    return out


def _shell_value(value: str | None, substituted: Mapping[str, str]) -> str | None:
    """A command-line value; a shell variable (``$1``, ``${1^^}``) only where --substitute gives it."""
    if value is None or "$" not in value:
        return value
    m = re.fullmatch(r"\$\{?(\w+)[^}]*\}?", value)
    return substituted.get(f"${m[1]}") if m else None


def _refers(s: str, names: set[str]) -> bool:
    return any(re.search(rf"\${{?{re.escape(v)}\b", s) for v in names)


def _derived(name: str, code: list[tuple[int, str]]) -> set[str]:
    """``name`` and the variables assigned from it (``custom=$(echo "$custom" | sed ...)``)."""
    names = {name}
    for _, s in code:
        m = re.match(r"\s*(?:export\s+|local\s+)?([A-Za-z_]\w*)=", s)
        if m and _refers(s, names):
            names.add(m[1])
    return names


def _quantize_command(s: str) -> bool:
    try:
        return any(re.search(r"quantize\b", Path(a).name) for a in shlex.split(s, comments=True))
    except ValueError:
        return False


def parse_shell(text: str, source, substituted: Mapping[str, str] | None = None) -> Parsed:
    """The ``regex=type`` lines a script keeps in a variable or heredoc, read with the tool its command names."""
    candidates = []
    for name, body in _blocks(text):
        rules = [(n, s.strip()) for n, s in body if s.strip() and not s.strip().startswith("#")]
        if rules and all(_BLOCK_LINE.match(s) for _, s in rules):
            candidates.append((name, body))
    if not candidates:
        raise _fail(source, None, "no variable or heredoc holding regex=type lines")
    code = [(n, s) for n, s in _join_continuations(text) if s.strip() and not s.strip().startswith("#")]
    commands = [(n, s) for n, s in code if _quantize_command(s)]
    name, body = candidates[-1]
    for cand, cand_body in candidates:
        if any(_refers(s, _derived(cand, code)) for _, s in commands):
            name, body = cand, cand_body
    comments = {n: s.strip() for n, s in body if s.strip().startswith("#")}
    entries = [_token_entry(s.strip(), n, source, _heading(comments, n))
               for n, s in body if s.strip() and not s.strip().startswith("#")]
    parsed = Parsed(Dialect.SHELL, "ik_llama.cpp", entries, comments)
    if any("--custom-q" in s for _, s in code):
        parsed.tool = "ik_llama.cpp"
    elif any("--tensor-type" in s for _, s in code):
        parsed.tool = "llama.cpp"
    else:
        parsed.warnings.append("neither --custom-q nor --tensor-type in the script; read as ik_llama.cpp --custom-q")
    derived = _derived(name, code)
    using = [(n, s) for n, s in commands if _refers(s, derived)] or commands
    if using:
        n, line = using[-1]
        args = shlex.split(line, comments=True)
        # the block stands in for the flattened variable; the rest of the command gives the options
        options, k = [], 0
        while k < len(args):
            if args[k] in ("--custom-q", "--tensor-type") and k + 1 < len(args):
                k += 2
                continue
            if not _refers(args[k], derived):
                options.append(args[k])
            k += 1
        cmd = _from_args(options, n, source, need_rules=False)
        parsed.warnings += cmd.warnings
        parsed.file_type = _shell_value(cmd.file_type, substituted or {})
        parsed.pure, parsed.imatrix = cmd.pure, cmd.imatrix
        parsed.token_embedding_type, parsed.output_tensor_type = cmd.token_embedding_type, cmd.output_tensor_type
    return parsed


# -- detection -------------------------------------------------------------------------------------
def detect(text: str, path: Path | None = None) -> Dialect:
    """The dialect of ``text``, from its content (a ``.recipe`` name only settles a tie)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and ("rules" in data or "unmatched" in data):
        return Dialect.YAML
    lines = _lines(text)
    code = [s for s in (ln.strip() for ln in lines) if s and not s.startswith("#")]
    if text.lstrip().startswith("#!") or any(_ASSIGN_OPEN.match(ln) for ln in lines) or _HEREDOC.search(text):
        return Dialect.SHELL
    if any("--custom-q" in s for s in code):
        return Dialect.CUSTOM_Q
    if any("--tensor-type" in s or re.search(r"quantize\b", s) for s in code):
        return Dialect.ARGS
    if "Quant mix recipe" in text or "## THE END" in text or (path is not None and path.suffix == ".recipe"):
        return Dialect.TOOL_SUITE
    anchored = all(_TOKEN.match(s) and s.startswith("^") and s.rsplit("=", 1)[0].endswith("$") for s in code)
    if code and anchored and any(ln.lstrip().startswith("#") for ln in lines):
        return Dialect.TOOL_SUITE
    if len(code) == 1 and "," in code[0] and "=" in code[0]:
        return Dialect.CUSTOM_Q
    if any("=" in s for s in code):
        return Dialect.TENSOR_TYPE_FILE
    raise RecipeSearchError("not a recipe in any dialect this tool reads "
                            "(YAML, tensor-type-file, args, custom-q, gguf-tool-suite, shell)", path)


def parse(text: str, dialect: Dialect, source, substituted: Mapping[str, str] | None = None) -> Parsed:
    if dialect is Dialect.TENSOR_TYPE_FILE:
        return parse_tensor_type_file(text, source)
    if dialect is Dialect.TOOL_SUITE:
        return parse_tool_suite(text, source)
    if dialect is Dialect.SHELL:
        return parse_shell(text, source, substituted)
    parsed = parse_command(text, source)
    if dialect is Dialect.CUSTOM_Q and parsed.tool != "ik_llama.cpp":
        raise _fail(source, None, "no --custom-q value found (the file reads as llama-quantize --tensor-type)")
    if dialect is Dialect.ARGS and parsed.tool != "llama.cpp":
        raise _fail(source, None, "no --tensor-type found (the file reads as ik_llama.cpp --custom-q)")
    return parsed


# -- to a Recipe -----------------------------------------------------------------------------------
def parse_substitutions(items: list[str] | None) -> dict[str, str]:
    """``--substitute ik_type=mainline_type`` arguments, keyed by the upper-cased source name."""
    out = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise RecipeSearchError(f"--substitute {item!r}: expected SOURCE_TYPE=MAINLINE_TYPE")
        out[src.strip().upper()] = parse_type(dst).name
    return out


def _type(name: str, line: int | None, source, subs: Mapping[str, str], used: dict[str, str]) -> str:
    key = name.strip().upper()
    if key in subs:
        used[key] = subs[key]
        return subs[key]
    if key.startswith("$"):
        raise _fail(source, line, f"type {name!r} is a shell variable; give it with --substitute '{name}=TYPE'")
    if key in IK_ONLY_TYPES:
        raise _fail(source, line, f"{name} is an ik_llama.cpp-only type; map it explicitly with "
                                  f"--substitute {name.lower()}=<llama.cpp type>")
    try:
        return parse_type(name).name
    except RecipeSearchError as err:
        raise _fail(source, line, str(err)) from None


def _unmatched(parsed: Parsed, unmatched: str | None, source, subs, used) -> tuple[Unmatched, str]:
    if unmatched is not None:
        return _unmatched_from(unmatched, source), f"{unmatched} (--unmatched)"
    if parsed.file_type is None:
        return Unmatched(type=DEFAULT_UNMATCHED), f"not stated by the source: {DEFAULT_UNMATCHED} (--unmatched)"
    ft = parsed.file_type.strip().upper()
    if ft in subs:
        used[ft] = subs[ft]
        return Unmatched(type=subs[ft]), f"{parsed.file_type} on the command line, substituted"
    if ft not in {f.label for f in FileType}:
        if ft in IK_ONLY_TYPES or _IK_FILE_TYPE.fullmatch(ft):
            raise _fail(source, None, f"file type {parsed.file_type} is ik_llama.cpp-only; map it with "
                                      f"--substitute {parsed.file_type.lower()}=<llama.cpp type> or give --unmatched")
        raise _fail(source, None, f"unknown file type {parsed.file_type!r} on the command line")
    label = parse_file_type(ft).label
    note = f"{label} on the command line" + (" (--pure)" if parsed.pure else " (llama.cpp's mixture)")
    if parsed.tool == "ik_llama.cpp" and not parsed.pure:
        note += "; ik_llama.cpp's own mixture differs from llama.cpp's for tensors no rule names"
    return Unmatched(file_type=label, pure=parsed.pure), note


def _unmatched_from(value: str, source) -> Unmatched:
    """``--unmatched``: a ggml type (every unnamed tensor to it) or a file type (llama.cpp's mixture)."""
    try:
        return Unmatched(type=parse_type(value).name)
    except RecipeSearchError:
        pass
    try:
        return Unmatched(file_type=parse_file_type(value).label, pure=False)
    except RecipeSearchError:
        raise _fail(source, None, f"--unmatched {value!r} is neither a ggml type nor a llama.cpp file type") from None


def _matches_name(entries: list[Entry], name: str) -> bool:
    return any(re.search(e.pattern, name) for e in entries)


def to_recipe(parsed: Parsed, source: Path, name: str | None = None, unmatched: str | None = None,
              substitutions: Mapping[str, str] | None = None) -> Recipe:
    """``parsed`` as a Recipe: rules in source order, their lines and comments kept in ``provenance``."""
    subs = dict(substitutions or {})
    used: dict[str, str] = {}
    rules: list[Rule] = []
    for e in parsed.entries:
        pattern = e.pattern.lower() if parsed.tool == "llama.cpp" else e.pattern
        try:
            check_pattern(pattern)
        except ValueError as err:
            raise _fail(source, e.line, str(err)) from None
        rules.append(Rule(pattern=pattern, type=_type(e.type_name, e.line, source, subs, used)))
    um, um_note = _unmatched(parsed, unmatched, source, subs, used)
    tok = out = None
    notes = []
    if parsed.token_embedding_type:
        if parsed.tool == "ik_llama.cpp" and _matches_name(parsed.entries, "token_embd.weight"):
            notes.append("--token-embedding-type dropped: a --custom-q rule names token_embd.weight and wins")
        else:
            tok = _type(parsed.token_embedding_type, None, source, subs, used)
    if parsed.output_tensor_type:
        if parsed.tool == "ik_llama.cpp" and _matches_name(parsed.entries, "output.weight"):
            notes.append("--output-tensor-type dropped: a --custom-q rule names output.weight and wins")
        else:
            out = _type(parsed.output_tensor_type, None, source, subs, used)
    provenance: dict[str, Any] = {
        "imported_from": source.name, "dialect": parsed.dialect.value, "tool": parsed.tool,
        "resolution": _SEMANTICS[parsed.tool], "unmatched": um_note,
        "rule_lines": [e.line for e in parsed.entries],
    }
    rule_comments = {i: e.comment for i, e in enumerate(parsed.entries) if e.comment}
    if parsed.comments:
        provenance["comments"] = {n: c for n, c in sorted(parsed.comments.items())}
    if rule_comments:
        provenance["rule_comments"] = rule_comments
    if used:
        provenance["substitutions"] = {k.lower(): v for k, v in used.items()}
    if parsed.stated_bpw is not None:
        provenance["stated_bpw"] = parsed.stated_bpw
    if notes:
        provenance["notes"] = notes
    data = {"name": name or source.stem, "unmatched": um.model_dump(exclude_none=True),
            "rules": [r.model_dump(exclude_none=True) for r in rules], "provenance": provenance}
    if tok:
        data["token_embedding_type"] = tok
    if out:
        data["output_tensor_type"] = out
    if parsed.imatrix:
        data["imatrix"] = parsed.imatrix
    return recipe_from_dict(data, source)


@dataclass(frozen=True)
class Imported:
    recipe: Recipe
    dialect: Dialect
    warnings: list[str]


def read_source(path: str | Path, fmt: Dialect | str | None = None, name: str | None = None,
                unmatched: str | None = None, substitutions: Mapping[str, str] | None = None) -> Imported:
    """A recipe file in any dialect (``fmt`` forces one), as a Recipe."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml") and fmt in (None, Dialect.YAML, "yaml"):
        return Imported(load_recipe(path), Dialect.YAML, [])
    text = read_text_file(path, "recipe")
    dialect = Dialect(fmt) if fmt else detect(text, path)
    if dialect is Dialect.YAML:
        return Imported(load_recipe(path), dialect, [])
    subs = dict(substitutions or {})
    shell_vars = {k: v for k, v in subs.items() if k.startswith("$")}
    parsed = parse(text, dialect, path, {k: v.lower() for k, v in shell_vars.items()})
    if not parsed.entries:
        raise _fail(path, None, "holds no regex=type rule")
    return Imported(to_recipe(parsed, path, name, unmatched, subs), dialect, parsed.warnings)


def load_any_recipe(path: str | Path, unmatched: str | None = None,
                    substitutions: Mapping[str, str] | None = None) -> Recipe:
    """The one loader the commands use: a recipe YAML, or a recipe in any dialect this module reads."""
    return read_source(path, unmatched=unmatched, substitutions=substitutions).recipe

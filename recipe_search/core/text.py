"""Texts to score and calibrate on: a file (optionally a fraction of it) or the built-in default.

The default text is the docstrings of a fixed list of Python standard-library modules, in a fixed
order: every machine with Python has it, so the demo runs offline with nothing downloaded. Real runs
pass a text path (wiki.test.raw is the usual one for KLD/PPL figures).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RecipeSearchError

DEFAULT_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email", "enum", "fractions", "functools", "heapq", "http.client", "inspect", "ipaddress",
    "itertools", "json", "logging", "mailbox", "pathlib", "pickle", "random", "re", "shutil", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid",
    "zipfile",
)
_RANGE = re.compile(r"^(?P<path>.+?)(?:\[(?P<a>[0-9.]*):(?P<b>[0-9.]*)\])?$")
# Byte sequences llama.cpp's tokenizer aborts the process on (unicode.cpp): a well-formed 4-byte shape whose
# code point lies above U+10FFFF, F4 90.. or an F5..F7 lead, passes its decoder and then throws "invalid
# codepoint". F5..FF never occur in UTF-8, so any of them is refused too. Other invalid bytes become U+FFFD there.
_ABORTS_TOKENIZER = re.compile(rb"\xF4[\x90-\xBF]|[\xF5-\xFF]")


def default_text() -> bytes:
    """Docstrings of DEFAULT_MODULES and their public members, in a fixed order."""
    parts: list[str] = []
    for name in DEFAULT_MODULES:
        module = importlib.import_module(name)
        doc = inspect.getdoc(module)
        if doc:
            parts.append(doc)
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "").startswith(name):
                d = inspect.getdoc(obj)
                if d and len(d) > 80:
                    parts.append(d)
    return "\n\n".join(parts).encode("utf-8")


@dataclass(frozen=True)
class TextSource:
    """A text file, or the default text (``path=None``), cut to the byte fraction [start, end) at line starts."""

    path: Path | None = None
    start: float = 0.0
    end: float = 1.0

    @classmethod
    def parse(cls, spec: str | None) -> TextSource:
        """``FILE``, ``FILE[0:0.4]`` (fractions of the file), or None for the default text."""
        if spec is None:
            return cls()
        m = _RANGE.match(spec)
        if m is None:
            raise RecipeSearchError(f"bad text spec {spec!r} (use FILE or FILE[0.4:1])")
        a, b = m["a"], m["b"]
        try:
            start = float(a) if a else 0.0
            end = float(b) if b else 1.0
        except ValueError:
            raise RecipeSearchError(f"bad text range in {spec!r} (use FILE[0.4:1])") from None
        if not 0 <= start < end <= 1:
            raise RecipeSearchError(f"bad text range in {spec!r}: need 0 <= start < end <= 1")
        return cls(Path(m["path"]), start, end)

    @property
    def label(self) -> str:
        name = self.path.name if self.path else "python-stdlib-docstrings"
        return name if (self.start, self.end) == (0.0, 1.0) else f"{name}[{self.start:g}:{self.end:g}]"

    def read(self) -> bytes:
        if self.path is None:
            data = default_text()
        else:
            try:
                if not stat.S_ISREG(os.stat(self.path).st_mode):  # a FIFO would block for ever
                    raise RecipeSearchError("cannot read text: not a regular file", self.path)
                data = self.path.read_bytes()
            except OSError as err:
                raise RecipeSearchError(f"cannot read text: {err.strerror}", self.path) from None
        begin, data = _cut(data, self.start, self.end)
        bad = _ABORTS_TOKENIZER.search(data)
        if bad:
            raise RecipeSearchError(f"not UTF-8 text at byte offset {begin + bad.start()} (bytes "
                                    f"{bad.group().hex(' ').upper()}, which llama.cpp's tokenizer aborts on)",
                                    self.path or self.label)
        # llama-perplexity's -f drops one trailing newline of the file
        return data[:-1] if self.end >= 1.0 and data.endswith(b"\n") else data

    def overlaps(self, other: TextSource) -> bool:
        """Byte ranges of the same text that intersect. Texts are told apart by file name, since what
        records a text (an imatrix's dataset, a reference's meta) keeps its label, not its path."""
        same = (self.path is None) == (other.path is None) and (
            self.path is None or other.path is None or self.path.name == other.path.name)
        return same and self.start < other.end and other.start < self.end


def overlapping(text: TextSource, specs: Iterable[str]) -> list[str]:
    """The text specs or labels among ``specs`` (an imatrix's datasets, say) whose text overlaps ``text``;
    specs that name no text are skipped."""
    out = []
    for spec in specs:
        try:
            if TextSource.parse(spec).overlaps(text):
                out.append(spec)
        except RecipeSearchError:
            continue
    return out


def _cut(data: bytes, start: float, end: float) -> tuple[int, bytes]:
    """The byte offset where the cut begins, and the cut."""
    def at_line(frac: float) -> int:
        if frac <= 0:
            return 0
        if frac >= 1:
            return len(data)
        pos = int(len(data) * frac)
        nl = data.find(b"\n", pos)
        return len(data) if nl < 0 else nl + 1

    begin = at_line(start)
    return begin, data[begin:at_line(end)]


def text_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ScoreSettings:
    """What a KLD measurement is made on: the text, the context per chunk, how many chunks, threads.

    Its defaults are every command's and the study config's."""

    text: TextSource = field(default_factory=TextSource)
    ctx: int = 512
    chunks: int | None = 8
    threads: int = 2
    n_seq: int = 4  # chunks per llama_decode, as llama-perplexity's -b 2048 at ctx 512
    gpu_layers: int = 0  # layers offloaded to a GPU (llama.cpp's n_gpu_layers; -1 all)
    # chunks the reference holds beyond `chunks`, as far as the text goes, for trials scored longer (a study's trials
    # near a size target); statistics stay those of the first `chunks`
    more_chunks: int = 0

    def key_fields(self) -> dict:
        return {"text": self.text.label, "ctx": self.ctx, "chunks": self.chunks}

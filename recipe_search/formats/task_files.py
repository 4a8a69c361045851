"""The task files llama-perplexity scores, read as `tools/perplexity/perplexity.cpp` reads them, and written.

- ``hellaswag``: a text file of 6 lines per task: the context, the index of the right ending (0-3), the 4
  endings. llama-perplexity scores ``context + " " + ending``.
- ``winogrande``: a CSV of ``index,sentence,option1,option2,answer`` (answer 1 or 2), the sentence with one
  ``_`` where an option goes, quoted when it holds a comma. llama-perplexity scores ``before + option + after``.
- ``multiple-choice``: llama.cpp's binary file (little-endian): the task count, each task's byte offset, then
  per task its question and two answer sets (``mc1``, one right answer; ``mc2``, unused), each a count, the
  answers and one int32 label per answer (1: right). Strings are a uint32 length and the bytes.
  llama-perplexity scores ``question + " " + answer`` of ``mc1``.

Where llama-perplexity skips a line it cannot parse with a log line and goes on, or reads a task it cannot
score, the reader refuses the file with a one-line error naming the line or the task, except a WinoGrande
header line (llama-perplexity skips it too) and blank lines, which hold no task. Every WinoGrande line is
read: llama-perplexity drops a last line without a newline after it, and `-f` drops the file's last newline,
so `llama-perplexity -f FILE --winogrande` never scores a file's last task (`-bf FILE` scores it).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeSearchError
from .files import atomic_write_bytes

#: the kinds of `--task KIND:FILE` that name a task file, each with the llama-perplexity option that scores it
TASK_FILE_KINDS = {"hellaswag": "--hellaswag", "winogrande": "--winogrande", "multiple-choice": "--multiple-choice"}
#: what a subset of a task file means, for a command's help
SUBSET_NOTE = ("llama-perplexity shuffles HellaSwag tasks with the C++ library's random distribution and takes "
               "400 by default (and a random subset of the other formats when given fewer tasks than the file "
               "holds), so only a whole file's accuracy compares with its; a limit here takes the first tasks "
               "in file order.")
_MAX_ANSWERS = 100  # multiple_choice_answers::deserialize refuses more


@dataclass(frozen=True)
class TaskItem:
    """One task: the text before the choice, the choices, the indices of the right ones, the text after.

    llama-perplexity scores ``context + " " + choice`` (HellaSwag, multiple-choice) or
    ``context + choice + suffix`` (WinoGrande, where context and suffix are the sentence around its ``_``).
    """

    context: str
    choices: tuple[str, ...]
    correct: tuple[int, ...]
    suffix: str = ""


@dataclass(frozen=True)
class TaskFile:
    """A task file's tasks, in file order."""

    kind: str
    path: Path
    items: tuple[TaskItem, ...]

    @property
    def max_choices(self) -> int:
        """The most choices of any task (llama-perplexity needs `-np` at least this, and at least 4)."""
        return max(len(item.choices) for item in self.items)


def read_task_file(kind: str, path: str | Path) -> TaskFile:
    """Read a task file of a kind of `TASK_FILE_KINDS`; a bad file is a one-line error naming it."""
    if kind not in _READERS:
        raise RecipeSearchError(f"unknown task kind {kind!r}: known are {', '.join(TASK_FILE_KINDS)}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecipeSearchError(f"cannot read the task file: {err.strerror or err}", path) from None
    if not data:
        raise RecipeSearchError("the task file is empty", path)
    items = _READERS[kind](data, path)
    if not items:
        raise RecipeSearchError(f"no {kind} task in the file", path)
    return TaskFile(kind, path, tuple(items))


def split_task_spec(spec: str, kinds: Iterable[str] = TASK_FILE_KINDS) -> tuple[str, str]:
    """``KIND:FILE`` as (kind, file), the kind one of ``kinds``; anything else is a one-line error."""
    kinds = list(kinds)
    kind, sep, file = spec.partition(":")
    if not sep or not file:
        raise RecipeSearchError(f"task {spec!r} is not KIND:FILE (kinds: {', '.join(kinds)})")
    if kind not in kinds:
        raise RecipeSearchError(f"unknown task kind {kind!r} in {spec!r}: known are {', '.join(kinds)}")
    return kind, file


def read_task_spec(spec: str) -> TaskFile:
    """The task file a ``KIND:FILE`` argument names (KIND one of `TASK_FILE_KINDS`)."""
    return read_task_file(*split_task_spec(spec))


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RecipeSearchError(f"line {line}: not UTF-8 text (byte {err.start})", path) from None


def _lines(text: str) -> list[str]:
    """The lines llama-perplexity's HellaSwag reader sees: `-f` drops the file's last newline, then
    `std::getline(stream, line, '\\n')` splits at newlines with no empty line after the last."""
    lines = text.removesuffix("\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


_STOI = re.compile(r"\s*([+-]?\d+)")  # what std::stoi and `istream >> int` read: spaces, a sign, digits


def _integer(field: str) -> int | None:
    match = _STOI.match(field)
    return int(match.group(1)) if match else None


def _read_hellaswag(data: bytes, path: Path) -> list[TaskItem]:
    lines = _lines(_text(data, path))
    if len(lines) % 6:
        raise RecipeSearchError(f"{len(lines)} lines, not a multiple of 6 (a HellaSwag task is 6 lines: the "
                                "context, the right ending's index, 4 endings)", path)
    items = []
    for start in range(0, len(lines), 6):
        label = _integer(lines[start + 1])
        if label is None or not 0 <= label <= 3:
            raise RecipeSearchError(f"line {start + 2}: the label {lines[start + 1]!r} is not an index 0-3 "
                                    "(a HellaSwag task is 6 lines: the context, the label, 4 endings)", path)
        items.append(TaskItem(lines[start], tuple(lines[start + 2 : start + 6]), (label,)))
    return items


def _commas(line: str) -> list[int]:
    """The positions of the first 4 commas outside double quotes, as load_winogrande_from_csv finds them."""
    found: list[int] = []
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            found.append(i)
            if len(found) == 4:
                break
    return found


def _read_winogrande(data: bytes, path: Path) -> list[TaskItem]:
    items = []
    for number, line in enumerate(_text(data, path).split("\n"), 1):
        if not line.strip():
            continue
        commas = _commas(line)
        if len(commas) != 4:
            raise RecipeSearchError(f"line {number}: not 5 comma-separated fields (index,sentence,option1,"
                                    "option2,answer)", path)
        c0, c1, c2, c3 = commas
        answer = _integer(line[c3 + 1 :])
        if answer is None and number == 1:
            continue  # a header line: llama-perplexity skips it as unparseable too
        if answer is None or answer not in (1, 2):
            raise RecipeSearchError(f"line {number}: the answer {line[c3 + 1:]!r} is not 1 or 2", path)
        # a quoted sentence loses its first and last character, whatever they are, as llama-perplexity does
        sentence = line[c0 + 2 : c1 - 1] if line[c0 + 1] == '"' else line[c0 + 1 : c1]
        blank = sentence.find("_")
        if blank < 0:
            raise RecipeSearchError(f"line {number}: the sentence has no _ where an option goes", path)
        items.append(TaskItem(sentence[:blank], (line[c1 + 1 : c2], line[c2 + 1 : c3]), (answer - 1,),
                              sentence[blank + 1 :]))
    return items


class _Reader:
    """Little-endian fields from the bytes of a multiple-choice file; running out is a one-line error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset, self.task = data, path, 0, 0

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            where = f"in task {self.task}" if self.task else "in its header"
            raise RecipeSearchError(f"truncated {where}: {n} bytes wanted at byte {self.offset}, the file has "
                                    f"{len(self.data)}", self.path)
        self.offset += n
        return self.data[self.offset - n : self.offset]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self, what: str) -> str:
        raw = self.take(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeSearchError(f"task {self.task}: its {what} is not UTF-8 text", self.path) from None

    def answers(self, which: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        n = self.u32()
        if n > _MAX_ANSWERS:
            raise RecipeSearchError(f"task {self.task}: {n} {which} answers, more than the {_MAX_ANSWERS} "
                                    "llama-perplexity reads", self.path)
        answers = tuple(self.string(f"{which} answer") for _ in range(n))
        return answers, struct.unpack(f"<{n}i", self.take(4 * n))


def _read_multiple_choice(data: bytes, path: Path) -> list[TaskItem]:
    reader = _Reader(data, path)
    n_task = reader.u32()
    if n_task == 0:
        raise RecipeSearchError("the task count is 0", path)
    reader.take(4 * n_task)  # each task's offset: llama-perplexity seeks to them only to pick a random subset
    items = []
    for task in range(1, n_task + 1):
        reader.task = task
        question = reader.string("question")
        answers, labels = reader.answers("mc1")
        reader.answers("mc2")  # read and unused, as llama-perplexity does
        if not question or not answers or not all(answers):
            raise RecipeSearchError(f"task {task}: an empty question or answer, or no answers", path)
        if any(label not in (0, 1) for label in labels):
            raise RecipeSearchError(f"task {task}: a label out of range {list(labels)} (1: right, 0: wrong)", path)
        if 1 not in labels:
            raise RecipeSearchError(f"task {task}: no answer is labelled right (1)", path)
        items.append(TaskItem(question, answers, tuple(i for i, label in enumerate(labels) if label == 1)))
    return items


_READERS: dict[str, Callable[[bytes, Path], list[TaskItem]]] = {
    "hellaswag": _read_hellaswag, "winogrande": _read_winogrande, "multiple-choice": _read_multiple_choice}


def task_file_bytes(kind: str, items: Iterable[TaskItem]) -> bytes:
    """Tasks as the bytes of a file of that kind, which `read_task_file` reads back to the same items."""
    items = list(items)
    if kind == "hellaswag":
        if any(len(it.choices) != 4 or len(it.correct) != 1 or it.suffix for it in items):
            raise ValueError("a HellaSwag task has 4 endings, one right, and no suffix")
        lines = [line for it in items for line in (it.context, str(it.correct[0]), *it.choices)]
        if any("\n" in line for line in lines):
            raise ValueError("a HellaSwag line cannot hold a newline")
        return "".join(f"{line}\n" for line in lines).encode("utf-8")
    if kind == "winogrande":
        rows = []
        for i, it in enumerate(items):
            sentence = f"{it.context}_{it.suffix}"
            if (len(it.choices) != 2 or len(it.correct) != 1 or "_" in it.context or '"' in sentence
                    or any("," in c or '"' in c for c in it.choices) or "\n" in sentence + "".join(it.choices)):
                raise ValueError("a WinoGrande task has 2 options without commas, one right; the text no quote, "
                                 "newline or second _")
            field = f'"{sentence}"' if "," in sentence else sentence
            rows.append(f"{i},{field},{it.choices[0]},{it.choices[1]},{it.correct[0] + 1}\n")
        return "".join(rows).encode("utf-8")
    if kind == "multiple-choice":
        def string(text: str) -> bytes:
            raw = text.encode("utf-8")
            return struct.pack("<I", len(raw)) + raw

        tasks = []
        for it in items:
            labels = [int(i in it.correct) for i in range(len(it.choices))]
            tasks.append(string(it.context) + struct.pack("<I", len(it.choices))
                         + b"".join(string(c) for c in it.choices) + struct.pack(f"<{len(labels)}i", *labels)
                         + struct.pack("<I", 0))  # mc2: no answers
        offsets, at = [], 4 + 4 * len(tasks)
        for task in tasks:
            offsets.append(at)
            at += len(task)
        return struct.pack(f"<I{len(tasks)}I", len(tasks), *offsets) + b"".join(tasks)
    raise ValueError(f"unknown task kind {kind!r}")


def write_task_file(kind: str, items: Iterable[TaskItem], path: str | Path) -> Path:
    """Write tasks as a file of that kind, atomically; the path written."""
    path = Path(path)
    atomic_write_bytes(path, task_file_bytes(kind, items))
    return path

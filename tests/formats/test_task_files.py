"""llama-perplexity's task files: HellaSwag and WinoGrande text, the multiple-choice binary, bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from recipe_search.errors import RecipeSearchError
from recipe_search.formats.task_files import (
    TASK_FILE_KINDS,
    TaskItem,
    read_task_file,
    read_task_spec,
    split_task_spec,
    task_file_bytes,
    write_task_file,
)

HELLASWAG = [
    TaskItem("Baking: The baker mixes flour and water in a bowl. He", ("kneads the dough on the table.",
             "paints the fence green.", "sings to the cat.", "drives the bus to town."), (0,)),
    TaskItem("Gardening: A woman digs a small hole in the soil. She", ("reads a book about trains.",
             "drops a seed into the hole.", "turns off the radio.", "washes the car."), (1,)),
]
WINOGRANDE = [
    TaskItem("The cup did not fit in the box because the ", ("cup", "box"), (1,), " was too small."),
    TaskItem("Ann, who was tired, thanked Mary because ", ("Ann", "Mary"), (1,), " had carried the bags."),
]
MULTIPLE_CHOICE = [
    TaskItem("What do bees make?", ("honey", "glass", "bread"), (0,)),
    TaskItem("Which of these can fly?", ("a stone", "a sparrow", "a chair", "a kite in the wind", "a fish"), (1, 3)),
]
ITEMS = {"hellaswag": HELLASWAG, "winogrande": WINOGRANDE, "multiple-choice": MULTIPLE_CHOICE}


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _mc_task(question: str, answers: list[str], labels: list[int]) -> bytes:
    return (_string(question) + struct.pack("<I", len(answers)) + b"".join(_string(a) for a in answers)
            + struct.pack(f"<{len(labels)}i", *labels) + struct.pack("<I", 0))


def _mc_file(tasks: list[bytes]) -> bytes:
    offsets, at = [], 4 + 4 * len(tasks)
    for task in tasks:
        offsets.append(at)
        at += len(task)
    return struct.pack(f"<I{len(tasks)}I", len(tasks), *offsets) + b"".join(tasks)


@pytest.mark.parametrize("kind", list(TASK_FILE_KINDS))
def test_written_files_read_back_to_the_same_tasks(tmp_path: Path, kind: str) -> None:
    path = write_task_file(kind, ITEMS[kind], tmp_path / "tasks")
    read = read_task_file(kind, path)
    assert read.kind == kind and read.path == path and read.items == tuple(ITEMS[kind])
    assert read_task_spec(f"{kind}:{path}").items == read.items


def test_hellaswag_layout_is_context_label_four_endings(tmp_path: Path) -> None:
    path = tmp_path / "hs.txt"
    task = "A man opens a door. He\n2\nflies away.\neats it.\nwalks in.\nsleeps."
    # llama-perplexity's -f drops the last newline, then std::getline gives no empty line after the last newline
    path.write_text(task + "\n\n", encoding="utf-8")
    assert len(read_task_file("hellaswag", path).items) == 1
    path.write_text(task + "\n\n\n", encoding="utf-8")
    with pytest.raises(RecipeSearchError, match="7 lines, not a multiple of 6"):
        read_task_file("hellaswag", path)
    path.write_text("A man opens a door. He\n 2\r\nflies away.\neats it.\nwalks in.\nsleeps.", encoding="utf-8")
    (item,) = read_task_file("hellaswag", path).items
    assert item == TaskItem("A man opens a door. He", ("flies away.", "eats it.", "walks in.", "sleeps."), (2,))


def test_winogrande_csv_as_llama_perplexity_splits_it(tmp_path: Path) -> None:
    path = tmp_path / "wg.csv"
    path.write_text('index,sentence,option1,option2,answer\n'
                    '0,"Sam, not Kim, won because _ ran fast.",Sam,Kim,1\r\n'
                    '\n'
                    '1,Kim lost to Sam as _ was slow.,Sam,Kim,2', encoding="utf-8")
    first, last = read_task_file("winogrande", path).items
    assert first == TaskItem("Sam, not Kim, won because ", ("Sam", "Kim"), (0,), " ran fast.")
    assert last == TaskItem("Kim lost to Sam as ", ("Sam", "Kim"), (1,), " was slow.")  # no newline: read too


def test_multiple_choice_binary_layout(tmp_path: Path) -> None:
    path = tmp_path / "mc.bin"
    path.write_bytes(_mc_file([_mc_task("Is ice cold?", ["yes", "no"], [1, 0]),
                               _mc_task("Pick the fruits.", ["apple", "nail", "pear"], [1, 0, 1])]))
    file = read_task_file("multiple-choice", path)
    assert file.items == (TaskItem("Is ice cold?", ("yes", "no"), (0,)),
                          TaskItem("Pick the fruits.", ("apple", "nail", "pear"), (0, 2)))
    assert file.max_choices == 3
    assert path.read_bytes() == task_file_bytes("multiple-choice", file.items)


def _one_line_error(kind: str, path: Path, match: str) -> None:
    with pytest.raises(RecipeSearchError, match=match) as err:
        read_task_file(kind, path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")


@pytest.mark.parametrize("kind", list(TASK_FILE_KINDS))
def test_empty_file(tmp_path: Path, kind: str) -> None:
    (tmp_path / "empty").write_bytes(b"")
    _one_line_error(kind, tmp_path / "empty", "empty")


@pytest.mark.parametrize("kind", ["hellaswag", "winogrande"])
def test_text_not_utf8(tmp_path: Path, kind: str) -> None:
    good = task_file_bytes(kind, ITEMS[kind])
    (tmp_path / "latin1").write_bytes(good + "Caf\xe9 au lait\n".encode("latin-1"))
    line = good.count(b"\n") + 1
    _one_line_error(kind, tmp_path / "latin1", f"line {line}: not UTF-8")


@pytest.mark.parametrize(("text", "match"), [
    ("context\n0\na\nb\nc\n", "5 lines, not a multiple of 6"),
    ("context\n4\na\nb\nc\nd\n", "line 2: the label '4' is not an index 0-3"),
    ("context\n-1\na\nb\nc\nd\n", "line 2: the label '-1'"),
    ("c\n1\na\nb\nc\nd\ncontext\nzero\na\nb\nc\nd\n", "line 8: the label 'zero'"),
    ("\n", "no hellaswag task"),
])
def test_bad_hellaswag(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "hs").write_text(text, encoding="utf-8")
    _one_line_error("hellaswag", tmp_path / "hs", match)


@pytest.mark.parametrize(("text", "match"), [
    ("0,The cat saw _ twice.,dog,bird,3\n", "line 1: the answer '3' is not 1 or 2"),
    ("0,The cat saw _ twice.,dog,bird,1\n1,The dog saw _.,cat,bird,two\n", "line 2: the answer 'two'"),
    ("0,The cat saw _ twice.,dog,bird,1\n1,The dog saw a cat.,cat,bird,1\n", "line 2: the sentence has no _"),
    ("0,The cat saw _ twice.,dog,bird\n", "line 1: not 5 comma-separated fields"),
    ("index,sentence,option1,option2,answer\n", "no winogrande task"),
])
def test_bad_winogrande(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "wg").write_text(text, encoding="utf-8")
    _one_line_error("winogrande", tmp_path / "wg", match)


def test_truncated_multiple_choice_file_at_every_length(tmp_path: Path) -> None:
    whole = task_file_bytes("multiple-choice", MULTIPLE_CHOICE)
    path = tmp_path / "mc"
    for cut in range(1, len(whole)):
        path.write_bytes(whole[:cut])
        _one_line_error("multiple-choice", path, r"truncated in (its header|task [12]): \d+ bytes wanted")


@pytest.mark.parametrize(("tasks", "match"), [
    ([_mc_task("Q?", ["a", "b"], [1, 2])], r"task 1: a label out of range \[1, 2\]"),
    ([_mc_task("Q?", ["a", "b"], [0, 1]), _mc_task("R?", ["a", "b"], [-1, 1])], "task 2: a label out of range"),
    ([_mc_task("Q?", ["a", "b"], [0, 0])], "task 1: no answer is labelled right"),
    ([_mc_task("Q?", ["a", ""], [1, 0])], "task 1: an empty question or answer"),
    ([_mc_task("", ["a", "b"], [1, 0])], "task 1: an empty question or answer"),
    ([_mc_task("Q?", [], [])], "task 1: an empty question or answer, or no answers"),
    ([_mc_task("Q?", ["a"] * 101, [1] + [0] * 100)], "task 1: 101 mc1 answers, more than the 100"),
    ([], "the task count is 0"),
])
def test_bad_multiple_choice(tmp_path: Path, tasks: list[bytes], match: str) -> None:
    (tmp_path / "mc").write_bytes(_mc_file(tasks))
    _one_line_error("multiple-choice", tmp_path / "mc", match)


def test_multiple_choice_text_not_utf8(tmp_path: Path) -> None:
    task = _mc_task("Q?", ["a", "b"], [1, 0]).replace(_string("b"), struct.pack("<I", 1) + b"\xff")
    (tmp_path / "mc").write_bytes(_mc_file([task]))
    _one_line_error("multiple-choice", tmp_path / "mc", "task 1: its mc1 answer is not UTF-8")


def test_task_specs() -> None:
    assert split_task_spec("winogrande:dir/wg:1.csv") == ("winogrande", "dir/wg:1.csv")
    assert split_task_spec("cloze:text.txt", [*TASK_FILE_KINDS, "cloze"]) == ("cloze", "text.txt")
    with pytest.raises(RecipeSearchError, match="unknown task kind 'cloze' .*known are hellaswag, winogrande, "
                                                "multiple-choice"):
        split_task_spec("cloze:text.txt")
    with pytest.raises(RecipeSearchError, match="is not KIND:FILE"):
        split_task_spec("hellaswag")
    with pytest.raises(RecipeSearchError, match="cannot read the task file"):
        read_task_spec("hellaswag:/nonexistent/hs.txt")


def test_writer_refuses_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError, match="4 endings"):
        task_file_bytes("hellaswag", [TaskItem("c", ("a", "b"), (0,))])
    with pytest.raises(ValueError, match="without commas"):
        task_file_bytes("winogrande", [TaskItem("c ", ("a,b", "d"), (0,), ".")])
    with pytest.raises(ValueError, match="unknown task kind"):
        task_file_bytes("cloze", [])

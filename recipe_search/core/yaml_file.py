"""Reading a user's YAML file (recipe, study config): UTF-8 only, no duplicate keys, one-line errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from ..errors import RecipeSearchError


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice (PyYAML keeps the last)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a ``what``: recipe, study config); a device, a GGUF model or bytes that are not
    UTF-8 are one line naming the file (and the offset of the first bad byte)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise RecipeSearchError(f"cannot read {what}: not a regular file", path)
        raw = path.read_bytes()
    except OSError as err:
        raise RecipeSearchError(f"cannot read {what}: {err.strerror}", path) from None
    if raw.startswith(b"GGUF"):
        raise RecipeSearchError(f"a GGUF model, not a {what}", path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeSearchError(f"not a UTF-8 {what}: byte 0x{raw[err.start]:02X} at offset {err.start}",
                                path) from None


def load_yaml(path: str | Path, what: str) -> object:
    """The parsed YAML in ``path`` (a ``what``: recipe, study config); any problem is one line naming the file."""
    text = read_text_file(path, what)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise RecipeSearchError(f"YAML syntax error: {where}{problem}", path) from None
    except RecursionError:
        raise RecipeSearchError("YAML nested too deeply", path) from None

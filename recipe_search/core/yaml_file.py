"""Reading a user's YAML file (recipe, study config): UTF-8 only, no duplicate keys, one-line errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

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


#: from this many characters on, a file is read through libyaml's parser (`_fast_load`): PyYAML's own took
#: minutes on a recipe of 300,000 rules
FAST_FROM = 256 * 1024
#: the tags of the scalars `_fast_load` builds itself; any other (a merge key, a timestamp) sends it to the full loader
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_MAX_DEPTH = 64  # deeper nesting goes to the full loader, which reports what it reports


class _Unusual(Exception):
    """What `_fast_load` leaves to the full loader: anchors, tags, merge keys, duplicate or complex keys, errors."""


def _fast_load(text: str) -> object:
    """``yaml.load(text, Loader=_StrictLoader)``, built from libyaml's events: plain scalars are resolved and
    constructed by PyYAML's own resolver and SafeConstructor (once per distinct value), so the result is the same
    Python data; a document using anything else raises `_Unusual` (the caller then loads it the full way, which
    gives the same data or the same error)."""
    resolver = yaml.resolver.Resolver()
    constructor = yaml.constructor.SafeConstructor()
    plain: dict[str, object] = {}
    stack: list[Any] = []  # the open mappings and sequences
    keys: list[Any] = []  # per open mapping: the key waiting for its value, or _NO_KEY
    top: Any = None
    result: object = None
    documents = 0
    loader = yaml.CSafeLoader(text)
    try:
        get = loader.get_event
        while True:
            event: Any = get()
            kind = event.__class__
            if kind is yaml.ScalarEvent:
                if event.anchor is not None or event.tag is not None:
                    raise _Unusual
                if not event.implicit[0]:  # quoted, literal or folded: a string
                    value: Any = event.value
                else:
                    value = plain.get(event.value, _NO_KEY)
                    if value is _NO_KEY:
                        tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
                        if tag not in _PLAIN_TAGS:
                            raise _Unusual
                        value = plain[event.value] = constructor.construct_object(yaml.ScalarNode(tag, event.value))
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.anchor is not None or event.tag is not None or len(stack) >= _MAX_DEPTH:
                    raise _Unusual
                value = {} if kind is yaml.MappingStartEvent else []
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
                keys.pop()
                top = stack[-1] if stack else None
                continue
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _Unusual  # the full loader refuses a second document
                continue
            elif kind is yaml.StreamEndEvent:
                return result
            elif kind is yaml.AliasEvent:
                raise _Unusual
            else:  # stream start, document end
                continue
            if top is None:
                result = value
            elif top.__class__ is list:
                top.append(value)
            elif keys[-1] is _NO_KEY:
                if value.__class__ is dict or value.__class__ is list or value in top:
                    raise _Unusual  # a complex or a duplicate key: the full loader says what and where
                keys[-1] = value
            else:
                top[keys[-1]] = value
                keys[-1] = _NO_KEY
            if kind is not yaml.ScalarEvent:
                stack.append(value)
                keys.append(_NO_KEY)
                top = value
    except (yaml.YAMLError, TypeError):  # TypeError: an unhashable key
        raise _Unusual from None
    finally:
        loader.dispose()


_NO_KEY = object()


def load_yaml(path: str | Path, what: str) -> object:
    """The parsed YAML in ``path`` (a ``what``: recipe, study config); any problem is one line naming the file."""
    text = read_text_file(path, what)
    if len(text) >= FAST_FROM and yaml.__with_libyaml__:
        try:
            return _fast_load(text)
        except _Unusual:
            pass
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise RecipeSearchError(f"YAML syntax error: {where}{problem}", path) from None
    except RecursionError:
        raise RecipeSearchError("YAML nested too deeply", path) from None

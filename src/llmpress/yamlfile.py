"""The one YAML reader of recipe files (compress's and run's): the data, the 1-based line of every key,
and PyYAML's several-line errors as one line with file:line, so a mistake is reported where it is."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import LlmpressError


def yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """PyYAML's message spans several lines (a caret under the text): one line, with file:line."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    return f"{where}: not valid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"


def key_lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map each key path (('eval', 'limit'), ('schemes', 1), ...) to its 1-based line."""
    out = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            out.update({p: n for p, n in key_lines(v, path + (k.value,)).items() if p != path + (k.value,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(key_lines(v, path + (i,)))
    return out


def read_yaml(path: Path, error: type[LlmpressError]) -> tuple[Any, dict[tuple, int], str]:
    """(data, key_lines, text) of the YAML file at `path` (an empty file reads as {}); text that is not
    YAML raises `error` with one line naming file:line."""
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise error(yaml_error(path, e)) from None
    return data, key_lines(node) if node is not None else {}, text

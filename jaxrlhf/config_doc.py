"""Every key of a stage's config with its default and a one-line description, read from the
config dataclasses themselves (``jaxrlhf config show STAGE``), so the listing cannot drift.

Defaults come from the dataclass fields. Descriptions come from, in order:

1. ``dataclasses.field(metadata={"help": ...})`` where a field has one;
2. the comment on the field's line (``lr: float = 1e-5  # peak learning rate``), continued
   by comment-only lines indented past the field, or whose text is indented (``#     more``);
3. a comment block directly above the field (comment lines at the field's indentation);
4. for a section (a field that is itself a dataclass), the first line of its class docstring;
5. the same key documented in :class:`~jaxrlhf.config.RunConfig` (``seed``, ``output_dir``...),
   which stage configs repeat without comment.

Comments are read with :mod:`tokenize` from the class's source, so the code's own comments
are the documentation and the dataclasses stay as readable as they are.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from typing import Any

import yaml

MISSING = "(required)"


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as --set takes it; items of a list of sections as "rewards[].kind"
    default: str  # YAML-style (null, true, [a, b]); "(required)" for a field without default
    help: str  # one line; "" when the field has no comment anywhere


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """``{field name: comment text}`` for the fields ``cls`` itself declares (not inherited)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (built in a REPL): no descriptions, still the keys
        return {}
    comments: dict[int, tuple[int, str, bool]] = {}  # line -> (column, text, text indented: a continuation)
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip(), tok.string.startswith("#  "))
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    body = ast.parse(source).body[0].body
    found = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        indent = node.col_offset
        parts = [comments[n][1] for n in range(node.lineno, node.end_lineno + 1)
                 if n in comments and n in code_lines]
        if parts:  # continuation lines: comment-only, indented past the field
            n = node.end_lineno + 1
            while n in comments and n not in code_lines and (comments[n][0] > indent or comments[n][2]):
                parts.append(comments[n][1])
                n += 1
        else:  # a block of comment-only lines right above, at the field's indentation
            n, block = node.lineno - 1, []
            while n in comments and n not in code_lines and comments[n][0] == indent and not comments[n][2]:
                block.insert(0, comments[n][1])
                n -= 1
            parts = block
        text = " ".join(p for p in parts if p)
        if text:
            found[node.target.id] = text
    return found


def _declared_comment(cls: type, name: str) -> str:
    """The comment of field ``name`` in the first class of ``cls``'s MRO that has one."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and name in field_comments(klass):
            return field_comments(klass)[name]
    return ""


def _yaml(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):  # bare when YAML would read it back as the same string
        plain = value and value.strip() == value and value[0] not in "[{'\"#&*!|>%@`-:?,"
        return value if plain and not isinstance(yaml.safe_load(value), (bool, int, float, type(None))) \
            else json.dumps(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return json.dumps(value, default=str)


def _float(value: float) -> str:
    """As yaml.safe_load reads it back as the same float: PyYAML (YAML 1.1) reads ``1e-05``
    as a string and wants ``1.0e-05``."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _section_type(field: dataclasses.Field, hints: dict) -> type | None:
    """The dataclass of a section field, ``Section`` or ``Section | None`` (an optional section
    such as ``logging.wandb``: its keys are listed with their defaults when it is given)."""
    tp = hints.get(field.name, field.type)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = options[0] if len(options) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _item_section_type(field: dataclasses.Field, hints: dict) -> type | None:
    """The element type of a ``tuple[SomeConfig, ...]`` field (a list of sections in YAML)."""
    tp = hints.get(field.name, field.type)
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _doc_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    # dataclasses write a signature as the docstring of a class without one: not a description
    return "" if doc.startswith(cls.__name__ + "(") else doc.splitlines()[0] if doc else ""


def config_keys(cls: type, prefix: str = "", defaults: Any = None) -> list[KeyDoc]:
    """Every key under the dataclass ``cls``, depth first in declaration order; sections are
    listed with their description and then their keys. ``defaults``: an instance whose values
    override the field defaults (a section's default may differ from its class's, e.g. PPO's
    ``rollout``)."""
    from jaxrlhf.config import RunConfig

    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        value = getattr(defaults, field.name) if defaults is not None else _default(field)
        text = (field.metadata.get("help") or _declared_comment(cls, field.name)
                or (_declared_comment(RunConfig, field.name) if not prefix else ""))
        section, item = _section_type(field, hints), _item_section_type(field, hints)
        if section is not None:
            given = dataclasses.is_dataclass(value)
            rows.append(KeyDoc(key, "" if given else _yaml(value), text or _doc_line(section)))
            rows += config_keys(section, key + ".", value if given else None)
        else:
            shown = MISSING if value is dataclasses.MISSING else _yaml(value)
            rows.append(KeyDoc(key, shown, text or (_doc_line(item) if item else "")))
            if item is not None:
                rows += config_keys(item, key + "[].")
    return rows


def with_preset(rows: list[KeyDoc], preset: dict, prefix: str = "") -> list[KeyDoc]:
    """``rows`` with the defaults a stage preset sets (nested dict of YAML keys, e.g. the RL
    stages' ``{"algorithm": {"advantage": "grpo"}}``) in place of the dataclass defaults."""
    flat = {}

    def walk(d: dict, at: str):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{at}{k}.")
            else:
                flat[at + k] = v

    walk(preset, prefix)
    return [dataclasses.replace(r, default=_yaml(flat[r.key])) if r.key in flat else r for r in rows]


def format_keys(rows: list[KeyDoc], title: str) -> str:
    """Aligned ``key  default  # description`` lines under ``title``; sections without a value."""
    width = max(len(r.key) for r in rows)
    value_width = min(max(len(r.default) for r in rows), 24)
    lines = [title]
    for r in rows:
        line = f"{r.key:<{width}}  {r.default:<{value_width}}"
        lines.append((line + (f"  # {r.help}" if r.help else "")).rstrip())
    return "\n".join(lines)

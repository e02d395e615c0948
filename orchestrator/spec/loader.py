"""Load job specs from YAML, safely, with file:line and field paths in every error.

YAML is composed into a node graph by PyYAML's safe composer and then turned into plain Python
values by our own small constructor, which

* remembers the line of every mapping key and value (for error messages),
* rejects duplicate keys (PyYAML silently keeps the last one),
* bounds the number of nodes visited, so alias bombs ("billion laughs") fail fast instead of
  eating memory, and rejects recursive aliases,
* bounds the nesting depth while composing (:class:`_DepthLimitedLoader`), so ``[[[[...`` fails
  with a message instead of a RecursionError, and bounds the length of every value and key,
* accepts only the plain YAML core tags (str, int, float, bool, null, timestamp, map, seq and the
  merge key), on scalars, mappings, sequences and keys alike,
* refuses numbers YAML 1.1 reads surprisingly (``1:30`` is base 60, ``010`` is octal) and
  integers beyond 64 bits, and reads ``1e-3`` as a number (YAML 1.2; PyYAML needs ``1.0e-3``).

The file is read by :func:`read_spec_text`: regular files only (never a pipe or a device), and
never more than :data:`MAX_SPEC_BYTES`.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecError, SpecFileError, SpecIssue, UsageError
from orchestrator.spec.datafile import DataFileError, inspect_npz
from orchestrator.spec.datasource import SourceError, list_source, resolve_source
from orchestrator.spec.models import CrossFieldError, JobSpec
from orchestrator.storage import check_location

MAX_SPEC_BYTES = 1_000_000
MAX_NODES = 20_000
MAX_DEPTH = 64
#: The longest value (string or number as written) and the longest mapping key.
MAX_SCALAR_CHARS = 10_000
MAX_KEY_CHARS = 128
#: Integers must fit in 64 bits (a seed, a count, a byte size): no field needs more.
MAX_INT = 2**63 - 1
#: Top-level keys a file may have before "this does not look like a job spec" (most unknown).
NOT_A_SPEC_MIN_KEYS = 3

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
#: A YAML 1.1 integer or float written in base 60 (``1:30`` is 90, ``190:20:30`` is 685230).
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
#: A YAML 1.1 octal integer (``010`` is 8; YAML 1.2 and every other reader say 10).
_LEGACY_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")
#: A YAML 1.2 float PyYAML reads as a string (``1e-3``: 1.1 floats need a dot).
_FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$")

class SpecDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings this loader would read back as numbers.

    PyYAML quotes ``"1:30"`` and ``"010"`` (its YAML 1.1 resolver reads them as numbers) but not
    ``"1e3"``, which :func:`parse_yaml_text` reads as a float (YAML 1.2): without the quotes a
    spec written out (``spec.yaml``, a ConfigMap, a sweep's best spec) would not read back the same.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _FLOAT_12.match(value):
        return dumper.represent_scalar(_STR_TAG, value, style="'")
    return dumper.represent_str(value)


SpecDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any, **kwargs: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False)`` that reads back identically through this loader."""
    kwargs.setdefault("sort_keys", False)
    text: str = yaml.dump(data, Dumper=SpecDumper, **kwargs)
    return text



_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:timestamp",
}


@dataclass
class LoadedYAML:
    """Plain data from a YAML document plus the line (1-based) of each field path."""

    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path`` or, failing that, of its nearest ancestor present in the file."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


class _TooDeep(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__("nested too deeply")
        self.mark = mark


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose (recursive) composer stops at :data:`MAX_DEPTH` nested levels.

    PyYAML composes nested collections by recursion, so about 1 KB of ``[[[[...`` used to end in a
    RecursionError before any check of ours ran; here the depth is counted as nodes are composed.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                raise _TooDeep(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _excerpt(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, for echoing something of the user's in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Builder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.visited = 0
        self.lines: dict[tuple[str | int, ...], int] = {}
        self._scalar = yaml.SafeLoader("")  # only used for its scalar constructors

    def build(self, node: yaml.Node, path: tuple[str | int, ...], stack: set[int]) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise SpecFileError(
                self.source,
                f"the YAML expands to more than {MAX_NODES} values (an alias bomb?)",
                fix="write the spec out without deeply nested anchors and aliases",
                line=node.start_mark.line + 1,
            )
        if len(path) > MAX_DEPTH or id(node) in stack:
            raise SpecFileError(
                self.source,
                "the YAML is nested too deeply or refers to itself through an alias",
                fix="remove the recursive anchor/alias",
                line=node.start_mark.line + 1,
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, {_MAP_TAG}, path)
            return self._mapping(node, path, stack | {id(node)})
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, {_SEQ_TAG}, path)
            return [
                self.build(child, path + (i,), stack | {id(node)})
                for i, child in enumerate(node.value)
            ]
        return self._scalar_value(node, path)

    def _fail(self, node: yaml.Node, message: str, fix: str, path: tuple[str | int, ...] = ()) -> SpecFileError:
        return SpecFileError(
            self.source, message, fix=fix, line=node.start_mark.line + 1, field_path=_excerpt(_dotted(path), 80)
        )

    def _check_tag(self, node: yaml.Node, allowed: set[str], path: tuple[str | int, ...] = ()) -> None:
        if node.tag not in allowed:
            raise self._fail(
                node,
                f"unsupported YAML tag {_excerpt(str(node.tag), 60)!r}",
                "remove the tag; job specs hold plain strings, numbers, lists and mappings",
                path,
            )

    def _scalar_value(self, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        self._check_tag(node, _SCALAR_TAGS, path)
        text = str(node.value)
        if len(text) > MAX_SCALAR_CHARS:
            raise self._fail(
                node,
                f"a value of {len(text)} characters (values are limited to {MAX_SCALAR_CHARS})",
                "keep data out of the spec; point data.source at a .npz file instead",
                path,
            )
        if "\x00" in text:
            raise self._fail(node, "the value holds a NUL character", "remove the \\0 escape", path)
        plain = getattr(node, "style", None) is None
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            if _SEXAGESIMAL.match(text):
                raise self._fail(
                    node,
                    f"{_excerpt(text)} is a base-60 number in YAML 1.1 (1:30 reads as 90)",
                    f"write the number you mean, or quote it (\"{_excerpt(text)}\") if it is text",
                    path,
                )
            if node.tag == "tag:yaml.org,2002:int" and _LEGACY_OCTAL.match(text):
                raise self._fail(
                    node,
                    f"{_excerpt(text)} is an octal number in YAML 1.1 (010 reads as 8)",
                    f"drop the leading zero ({text.lstrip('+-').lstrip('0_') or '0'}), or quote it if it is text",
                    path,
                )
            if node.tag == "tag:yaml.org,2002:int" and len(text) > 80:
                raise self._fail(node, f"an integer of {len(text)} characters",
                                 f"integers are at most {MAX_INT}", path)
        elif plain and node.tag == _STR_TAG and _FLOAT_12.match(text):
            return float(text)  # 1e-3: a number to every reader but PyYAML
        value = self._scalar.construct_object(node, deep=True)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise self._fail(node, f"the integer {_excerpt(text)} is out of range",
                             f"integers are at most {MAX_INT}", path)
        if node.tag == "tag:yaml.org,2002:timestamp":
            value = str(node.value)  # keep dates as the text the user wrote
        return value

    def _mapping(self, node: yaml.MappingNode, path: tuple[str | int, ...], stack: set[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in self._merged_pairs(node):
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecFileError(
                    self.source,
                    "a mapping key must be a plain string",
                    fix="use simple keys such as 'epochs:'",
                    line=key_node.start_mark.line + 1,
                )
            self._check_tag(key_node, _SCALAR_TAGS, path)
            key = str(key_node.value)
            if len(key) > MAX_KEY_CHARS:
                raise self._fail(
                    key_node,
                    f"a key of {len(key)} characters ({_excerpt(key)!r}); keys are at most {MAX_KEY_CHARS}",
                    "use the field names of a job spec (see `orchestrator schema`)",
                )
            if key in out:
                raise SpecFileError(
                    self.source,
                    f"{_dotted(path + (key,))}: key {key!r} appears twice",
                    fix="keep one of the two entries",
                    line=key_node.start_mark.line + 1,
                )
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, path + (key,), stack)
        return out

    def _merged_pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """Resolve YAML merge keys (``<<: *defaults``); explicit keys win over merged ones."""
        explicit = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        names = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            if key.tag != _MERGE_TAG:
                continue
            if isinstance(value, yaml.SequenceNode):
                self._check_tag(value, {_SEQ_TAG})
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    raise SpecFileError(
                        self.source,
                        "a merge key (<<) must refer to a mapping",
                        fix="merge an anchored mapping: '<<: *defaults'",
                        line=src.start_mark.line + 1,
                    )
                self._check_tag(src, {_MAP_TAG})
                for k, v in src.value:
                    self.visited += 1
                    if self.visited > MAX_NODES:
                        raise SpecFileError(
                            self.source,
                            f"the YAML expands to more than {MAX_NODES} values (an alias bomb?)",
                            fix="write the spec out without deeply nested anchors and aliases",
                            line=src.start_mark.line + 1,
                        )
                    if isinstance(k, yaml.ScalarNode) and k.value not in names:
                        names.add(k.value)
                        merged.append((k, v))
        return merged + explicit


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_yaml_text(text: str, source: str) -> LoadedYAML:
    """Parse one YAML document into plain data with line numbers. Raises SpecFileError."""
    loader: _DepthLimitedLoader | None = None
    try:
        loader = _DepthLimitedLoader(text)  # its reader refuses control characters right here
        node = loader.get_single_node()
    except _TooDeep as exc:
        raise SpecFileError(
            source,
            f"the YAML is nested more than {MAX_DEPTH} levels deep",
            fix="a job spec is a few levels deep; check for runaway brackets or indentation",
            line=exc.mark.line + 1,
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        context = f" {exc.context}" if exc.context else ""
        raise SpecFileError(
            source,
            f"YAML syntax error: {problem}{context}",
            fix="check indentation, colons and quotes near this line",
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.reader.ReaderError as exc:
        raise SpecFileError(
            source,
            f"the text holds a control character ({exc.character!r}) at offset {exc.position}",
            fix="remove it; a spec is plain text (tabs and newlines are fine)",
            line=text[: exc.position].count("\n") + 1,
        ) from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise SpecFileError(source, f"YAML syntax error: {_excerpt(reason, 200)}", fix="check the YAML syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise SpecFileError(
            source,
            "the file is empty",
            fix="a job spec needs at least 'name:' and 'model:' (see jobs/cnn.yaml)",
        )
    builder = _Builder(source)
    data = builder.build(node, (), set())
    return LoadedYAML(data=data, lines=builder.lines)


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for messages)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def read_spec_text(path: Path) -> str:
    """Read a spec file as UTF-8 text, turning every file problem into a SpecFileError.

    Only a regular file is read (a FIFO would block forever, ``/dev/zero`` never ends): the file
    is opened without blocking and checked with ``fstat`` before a byte is read, and at most
    :data:`MAX_SPEC_BYTES` + 1 bytes are read whatever size the file reports.
    """
    source = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecFileError(source, "no such file", fix="check the path; example specs are in jobs/") from None
    except PermissionError:
        raise SpecFileError(
            source, "the file cannot be read (permission denied)", fix="check its permissions"
        ) from None
    except IsADirectoryError:
        raise SpecFileError(source, "is a directory, not a file", fix="pass a .yaml file") from None
    except OSError as exc:
        raise SpecFileError(source, f"the file cannot be read: {exc.strerror}", fix="check the path") from None
    except ValueError:  # a NUL byte in the path
        raise SpecFileError(source, "is not a valid path", fix="pass the path of a .yaml file") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecFileError(source, "is a directory, not a file", fix="pass a .yaml file")
        if not stat.S_ISREG(mode):
            raise SpecFileError(
                source,
                f"is {file_kind(mode)}, not a regular file; nothing was read from it",
                fix="save the spec to a .yaml file and pass that file",
            )
        raw = _read_at_most(fd, MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecFileError(source, f"the file cannot be read: {exc.strerror}", fix="check the path") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecFileError(
            source,
            f"the file is larger than {MAX_SPEC_BYTES} bytes, the limit for a job spec",
            fix="keep data out of the spec; point data.source at a .npz file instead",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecFileError(
            source,
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            fix="save the file as UTF-8",
            line=line,
        ) from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _model_for_path(path: tuple[str | int, ...], data: Any) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``path`` (for 'did you mean')."""
    model: type[BaseModel] = JobSpec
    node = data
    for part in path:
        if not isinstance(part, str):
            return None
        info = model.model_fields.get(part)
        if info is None:
            return None
        node = node.get(part) if isinstance(node, Mapping) else None
        candidates = _models_in(info.annotation)
        if not candidates:
            return None
        model = _pick_by_type(candidates, node)
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _models_in(arg)
    return found


def _pick_by_type(candidates: list[type[BaseModel]], node: Any) -> type[BaseModel]:
    """Among a discriminated union's members, the one whose ``type`` the data names."""
    if len(candidates) > 1 and isinstance(node, Mapping):
        for candidate in candidates:
            tag = candidate.model_fields.get("type")
            if tag is not None and tag.default == node.get("type"):
                return candidate
    return candidates[0]


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[str | int, ...]:
    """Drop pydantic's union/discriminator tags from an error location."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if 0 <= part < len(node) else None
        elif isinstance(node, Mapping) and isinstance(part, str) and not out[-1:] == [part]:
            # Either a tag (e.g. 'cnn' of a discriminated union) or a field the user left out.
            model = _model_for_path(tuple(out), data)
            if model is not None and part in model.model_fields:
                out.append(part)
                node = None
        else:
            out.append(part)
            node = None
    return tuple(out)


def issues_from_validation(
    exc: ValidationError, data: Any, loaded: LoadedYAML | None = None
) -> list[SpecIssue]:
    """Turn pydantic errors into SpecIssues with field paths, lines and fixes."""
    issues: list[SpecIssue] = []
    for err in exc.errors(include_url=False):
        ctx = err.get("ctx") or {}
        original = ctx.get("error")
        loc = _clean_loc(tuple(err["loc"]), data)
        fix: str | None = None
        message = err["msg"].removeprefix("Value error, ")
        if isinstance(original, CrossFieldError):
            loc = loc + tuple(int(p) if p.isdigit() else p for p in original.field_path.split("."))
            message, fix = str(original), original.fix
        path = _dotted(loc)
        kind = err["type"]
        value: Any = err.get("input")
        if isinstance(original, CrossFieldError) and original.hide_value:
            value = ...  # it may be a credential: never echo it back
        if kind == "extra_forbidden":
            parent = _model_for_path(loc[:-1], data)
            allowed = sorted(parent.model_fields) if parent else []
            name = str(loc[-1]) if loc else ""
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            message = "unknown field"
            fix = f"did you mean `{close[0]}`?" if close else "remove it"
            if allowed:
                fix = (fix + "; " if close else "") + "Allowed here: " + ", ".join(allowed)
            if loc == ("tune",):
                fix = "a spec with a `tune:` section is a sweep: run it with `orchestrator tune SPEC`"
            value = None
            issues.append(_issue(path, message, fix, loaded, loc))
            continue
        if kind == "missing":
            issues.append(_issue(path, "required field is missing", f"add `{path}:`", loaded, loc))
            continue
        if kind == "union_tag_invalid":
            expected = ctx.get("expected_tags", "")
            fix = f"use one of {expected}"
            message = f"unknown {ctx.get('discriminator', 'type')}"
            value = ctx.get("tag")
            loc = loc + ("type",)
            path = _dotted(loc)
        elif kind == "union_tag_not_found":
            message = "needs a 'type'"
            fix = "add 'type: cnn' (or another built-in model type)"
        elif kind == "literal_error":
            fix = f"use {ctx.get('expected')}"
            if isinstance(value, str):
                close = difflib.get_close_matches(
                    value, [s.strip(" '") for s in str(ctx.get("expected", "")).replace(" or ", ",").split(",")], n=1
                )
                if close:
                    fix = f"did you mean `{close[0]}`? ({fix})"
        elif kind == "value_error" and "; " in message:
            message, fix = message.split("; ", 1)  # our validators write "what is wrong; how to fix it"
        elif fix is None:
            fix = _type_hint(kind, value, path) or _generic_fix(kind, ctx, path)
        issues.append(_issue(path, message, fix or _FALLBACK_FIX, loaded, loc, value))
    return issues


def _looks_numeric(text: str) -> bool:
    return bool(re.match(r"^\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$", text[:100]))


_FALLBACK_FIX = "see the field's type and bounds in `orchestrator schema`"


def _type_hint(kind: str, value: Any, path: str) -> str | None:
    """A fix for a value of the wrong type that YAML or habit produced (strict fields)."""
    if kind.startswith("int_") and isinstance(value, bool):
        return f"{path} takes a whole number; {str(value).lower()} (or yes/no/on/off) is a boolean"
    if kind.startswith(("int_", "float_")) and isinstance(value, str) and _looks_numeric(value):
        return f"write {path} as a number without quotes"
    if kind.startswith("int_") and isinstance(value, float):
        return f"write {path} as a whole number without a decimal point"
    if kind == "finite_number":
        return f"set {path} to a finite number"
    if kind.startswith("bool") and not isinstance(value, bool):
        return f"write {path} as true or false, without quotes"
    if kind == "string_type" and isinstance(value, bool):
        return f"quote the value of {path}: YAML reads yes, no, on, off, true and false as booleans"
    if kind == "string_type" and isinstance(value, (int, float)):
        return f"quote the value of {path} to make it a string"
    return None


def _issue(
    path: str,
    message: str,
    fix: str | None,
    loaded: LoadedYAML | None,
    loc: tuple[str | int, ...],
    value: Any = ...,
) -> SpecIssue:
    line = loaded.line_of(loc) if loaded else None
    if value is ... or isinstance(value, (dict, list)) and len(repr(value)) > 80:
        return SpecIssue(path, message, fix=fix, line=line)
    return SpecIssue(path, message, value=value, fix=fix, line=line)


def _generic_fix(kind: str, ctx: Mapping[str, Any], path: str) -> str | None:
    bounds = {
        "greater_than": "greater than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        return f"set {path} to a value " + bounds[kind].format(**ctx)
    if kind.startswith("int_"):
        return f"set {path} to a whole number"
    if kind.startswith("float_"):
        return f"set {path} to a number"
    if kind.startswith("bool"):
        return f"set {path} to true or false"
    if kind in {"string_type", "string_pattern_mismatch"}:
        return f"set {path} to a string" + (
            f" matching {ctx['pattern']}" if "pattern" in ctx else ""
        )
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"write {path or 'the spec'} as a mapping (key: value lines), not a list or scalar"
    if kind == "list_type":
        return f"write {path} as a list, e.g. [32, 64]"
    if kind in {"too_short", "too_long"}:
        return f"give {path} between {ctx.get('min_length', 0)} and {ctx.get('max_length', '...')} items"
    return None


def not_a_spec_issue(data: Mapping[str, Any], fields: Iterable[str], what: str = "job spec") -> SpecIssue | None:
    """One issue instead of one per key when most top-level keys are not spec fields.

    A file that is no spec at all (``/etc/passwd``, a config file of another tool) would otherwise
    be echoed back line by line as "unknown field" keys.
    """
    known = set(fields)
    unknown = [str(k) for k in data if k not in known]
    if len(data) < NOT_A_SPEC_MIN_KEYS or len(unknown) * 2 <= len(data):
        return None
    sample = ", ".join(repr(_excerpt(k, 20)) for k in unknown[:3])
    return SpecIssue(
        "",
        f"this does not look like a {what}: {len(unknown)} of its {len(data)} top-level keys are not "
        f"{what} fields (e.g. {sample})",
        fix="pass a job spec file such as jobs/cnn.yaml; its top-level fields are " + ", ".join(sorted(known)),
        line=1,
    )


def validate_spec_data(data: Any, *, source: str | None = None, loaded: LoadedYAML | None = None) -> JobSpec:
    """Validate plain data as a JobSpec, raising SpecError with every issue found."""
    if isinstance(data, Mapping):
        issue = not_a_spec_issue(data, JobSpec.model_fields)
        if issue is not None:
            raise SpecError([issue], source=source)
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise SpecError(
            [
                SpecIssue(
                    "",
                    f"the top level must be a mapping of fields, not {kind}",
                    fix="start the file with 'name: my-job' and 'model:' lines",
                    line=1,
                )
            ],
            source=source,
        )
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from_validation(exc, data, loaded), source=source) from None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/flow collections."""
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(
                [SpecIssue(_excerpt(item), "override needs the form path=value", fix="e.g. --set training.epochs=3")],
                source=source,
            )
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise SpecError(
                [SpecIssue(_excerpt(key), "empty field name in override path", fix="e.g. --set training.epochs=3")],
                source=source,
            )
        if len(parts) > MAX_DEPTH or any(len(p) > MAX_KEY_CHARS for p in parts):
            raise SpecError(
                [SpecIssue(_excerpt(key), f"an override path is at most {MAX_DEPTH} fields of at most "
                           f"{MAX_KEY_CHARS} characters", fix="e.g. --set training.epochs=3")],
                source=source,
            )
        value = parse_yaml_text(raw, f"--set {_excerpt(key)}").data if raw.strip() else ""
        target = out
        for i, part in enumerate(parts[:-1]):
            nxt = target.get(part)
            if nxt is None:
                nxt = target[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError(
                    [SpecIssue(".".join(parts[: i + 1]), "is not a mapping, cannot set a field inside it",
                               fix=f"set {'.'.join(parts[: i + 1])} itself, or a field of a section")],
                    source=source,
                )
            target = nxt
        target[parts[-1]] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def parse_injection(text: str) -> dict[str, Any]:
    """``kind=sigkill,rank=1,at_step=35[,attempt=1]`` (the --inject-failure option) as a dict."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SpecError(
                [SpecIssue("testing.inject", f"cannot read {_excerpt(part)!r}",
                           fix="write kind=sigkill,rank=1,at_step=35 (kind, rank, at_step or at_epoch, attempt)")],
                source="--inject-failure",
            )
        value = value.strip()
        out[_excerpt(key.strip())] = int(value) if value.isascii() and value.isdigit() and len(value) < 19 else value
    return out


def load_spec(
    path: str | os.PathLike[str], overrides: Iterable[str] = (), inject: Iterable[str] = ()
) -> JobSpec:
    """Read, parse and validate a job spec file, with optional ``path=value`` overrides.

    Relative paths inside the spec (``data.source``, ``entrypoint``) are resolved against the
    spec file's directory, so a spec works from any current directory.
    """
    spec_path = Path(path)
    source = str(path)
    loaded = parse_yaml_text(read_spec_text(spec_path), source)
    data = loaded.data
    overrides = list(overrides)
    if overrides and isinstance(data, dict):
        data = apply_overrides(data, overrides)
    injections = [parse_injection(text) for text in inject]
    if injections and isinstance(data, dict):
        testing = dict(data.get("testing") or {})
        testing["inject"] = list(testing.get("inject") or []) + injections
        data = {**data, "testing": testing}
    try:
        spec = validate_spec_data(data, source=source, loaded=loaded)
    except SpecError as exc:
        raise _blame_overrides(exc, overrides) from None
    return resolve_paths(spec, spec_path.resolve().parent, source=source, loaded=loaded)


def _blame_overrides(exc: SpecError, overrides: list[str]) -> SpecError:
    """Point issues about overridden fields at the --set option rather than a file line."""
    keys = {item.split("=", 1)[0].strip(): item for item in overrides}
    issues = []
    for issue in exc.issues:
        item = next((v for k, v in keys.items() if issue.field_path == k or issue.field_path.startswith(k + ".")), None)
        if item is None:
            issues.append(issue)
        else:
            issues.append(replace(issue, line=None, message=f"{issue.message} (from --set {item})"))
    return SpecError(issues, source=exc.source)


def resolve_paths(spec: JobSpec, base: Path, *, source: str | None = None, loaded: LoadedYAML | None = None) -> JobSpec:
    """Make file references absolute and check that they exist (the one place that does I/O)."""
    issues: list[SpecIssue] = []
    updates: dict[str, Any] = {}
    if spec.data.is_file_set:
        where = resolve_source(spec.data.source, str(base))
        try:
            # local and shared paths are listed now (no file is read); s3:// and gs:// when the job
            # starts, with the credentials of the machine that runs it
            if "://" not in where:
                list_source(where, spec.data.format)
        except SourceError as exc:
            issues.append(SpecIssue("data.source", exc.message, value=_excerpt(spec.data.source, 80), fix=exc.fix,
                                    line=loaded.line_of(("data", "source")) if loaded else None))
        updates["data"] = spec.data.model_copy(update={"source": where})
    elif not spec.data.is_builtin:
        data_path = (base / spec.data.source).resolve()
        try:
            inspect_npz(data_path, ("x", "y"))  # from the headers only: milliseconds, nothing loaded
        except DataFileError as exc:
            message = "data file not found" if exc.message == "file not found" else f"data file: {exc.message}"
            issues.append(
                SpecIssue(
                    "data.source",
                    message,
                    value=_excerpt(spec.data.source, 80),
                    fix=exc.fix,
                    line=loaded.line_of(("data", "source")) if loaded else None,
                )
            )
        updates["data"] = spec.data.model_copy(update={"source": str(data_path)})
    if spec.entrypoint:
        file_part, func = spec.entrypoint.rsplit(":", 1)
        entry = (base / file_part).resolve()
        if not entry.is_file():
            issues.append(
                SpecIssue(
                    "entrypoint",
                    "entrypoint file not found",
                    value=spec.entrypoint,
                    fix=f"check the path (resolved to {entry})",
                    line=loaded.line_of(("entrypoint",)) if loaded else None,
                )
            )
        updates["entrypoint"] = f"{entry}:{func}"
    if spec.checkpoint.dir:
        updates["checkpoint"] = spec.checkpoint.model_copy(
            update={"dir": str((base / os.path.expanduser(spec.checkpoint.dir)).resolve())}
        )
    if issues:
        raise SpecError(issues, source=source)
    return spec.model_copy(update=updates) if updates else spec


def with_default_storage(spec: JobSpec, default: str | None) -> JobSpec:
    """``spec`` with ``storage`` set to ``default`` (ORCHESTRATOR_STORAGE) when it sets none."""
    if spec.storage or not default:
        return spec
    try:
        location = check_location(default)
    except ValueError as exc:
        raise UsageError(f"ORCHESTRATOR_STORAGE: {exc}",
                         fix="set ORCHESTRATOR_STORAGE to s3://bucket/prefix, gs://bucket/prefix or an "
                             "absolute shared path, or unset it") from None
    return spec.model_copy(update={"storage": location})

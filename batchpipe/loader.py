"""Finds and parses pipelines/*.yaml; every error carries file:line:col.

YAML is parsed twice from the same text: once into plain data for pydantic, once
into nodes whose marks give each key's position. A validation error is then
reported at the exact place the analyst has to edit, all errors at once.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from batchpipe.config import Pipeline
from batchpipe.errors import ConfigError

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class PipelineFile:
    """A validated pipeline with the positions of its keys in its file."""

    path: Path
    pipeline: Pipeline
    positions: dict[Path_, tuple[int, int]] = field(repr=False, compare=False)

    def where(self, *key_path: str | int) -> str:
        """`file:line:col` of a key, or of its nearest parent that is in the file."""
        return _where(self.path, self.positions, key_path)

    def error(self, key_path: tuple[str | int, ...], message: str) -> ConfigError:
        dotted = ".".join(str(p) for p in key_path)
        return ConfigError([f"{self.where(*key_path)}: {dotted}: {message}"])


def pipelines_dir() -> Path:
    return Path(os.environ.get("BATCHPIPE_PIPELINES", "pipelines"))


def load_pipelines(directory: Path | None = None) -> list[PipelineFile]:
    """Every pipeline file in the directory, or one ConfigError listing all problems."""
    folder = load_folder(directory)
    if folder.broken:
        raise ConfigError([problem for problems in folder.broken.values() for problem in problems])
    return folder.files


@dataclass(frozen=True)
class Folder:
    """A folder's pipeline files as a code location loads them: the good ones, and the
    problems of each file that cannot load (a clash is the later file's)."""

    files: list[PipelineFile]
    broken: dict[Path, list[str]]


def load_folder(directory: Path | None = None) -> Folder:
    """Every file of the folder, one broken file not stopping the others: the code
    location keeps the valid pipelines (and their sensors, which load what is paid for)
    while `load_pipelines` (and so `batchpipe validate`) still refuses the folder."""
    directory = directory or pipelines_dir()
    if not directory.is_dir():
        raise ConfigError([f"{directory}: no such directory (set BATCHPIPE_PIPELINES)"])
    files: list[PipelineFile] = []
    broken: dict[Path, list[str]] = {}
    for path in sorted(directory.glob("*.y*ml")):
        try:
            files.append(load_file(path))
        except ConfigError as err:
            broken[path] = list(err.problems)
    for pf, message in clashes(files):
        broken.setdefault(pf.path, []).append(message)
    return Folder([pf for pf in files if pf.path not in broken], broken)


def clashes(
    files: Sequence[PipelineFile], concerning: Sequence[PipelineFile] | None = None
) -> list[tuple[PipelineFile, str]]:
    """What two files of one folder must not share: a pipeline name (the Dagster asset
    keys), or an output table (a run of one would delete the other's rows of that date).

    Each clash is reported at the later file, naming the first one, as `(file, message)`.
    With `concerning` (`batchpipe validate FILE`), only those files are reported, each
    against the first other file it clashes with. Table names are compared as DuckDB
    compares them, case-insensitively.
    """
    found: list[tuple[PipelineFile, str]] = []
    for index, pf in enumerate(files if concerning is None else concerning):
        others = files[:index] if concerning is None else files
        others = [o for o in others if o.path.resolve() != pf.path.resolve()]
        name = pf.pipeline.name
        if same := next((o for o in others if o.pipeline.name == name), None):
            found.append(
                (
                    pf,
                    f"{pf.where('name')}: name: {name!r} is already used by "
                    f"{same.where('name')}; pipeline names must be unique",
                )
            )
        table = pf.pipeline.output.table
        if same := next(
            (o for o in others if o.pipeline.output.table.lower() == table.lower()), None
        ):
            spelled = same.pipeline.output.table
            spelling = "" if spelled == table else f", as {spelled!r}: DuckDB ignores case"
            found.append(
                (
                    pf,
                    f"{pf.where('output', 'table')}: output.table: {table!r} is also the output "
                    f"table of {same.pipeline.name!r} ({same.where('output', 'table')}"
                    f"{spelling}); an output table belongs to one pipeline, and a run of "
                    "either would delete the other's rows: choose another output.table",
                )
            )
    return found


def folder_clashes(files: Sequence[PipelineFile]) -> list[tuple[PipelineFile, str]]:
    """`clashes` of the given files with the other files of their folders, as
    `load_pipelines` of each folder would report them: `batchpipe validate FILE` then
    catches a copy beside the file that would make the folder unloadable. The others
    are read quietly; their own problems are theirs to report."""
    by_folder: dict[Path, list[PipelineFile]] = {}
    for pf in files:
        by_folder.setdefault(pf.path.resolve().parent, []).append(pf)
    found: list[tuple[PipelineFile, str]] = []
    for group in by_folder.values():
        given = {pf.path.resolve(): pf for pf in group}
        folder: list[PipelineFile] = []
        for path in sorted(group[0].path.parent.glob("*.y*ml")):
            if path.resolve() in given:
                folder.append(given[path.resolve()])
                continue
            try:
                folder.append(load_file(path))
            except (ConfigError, OSError):
                continue
        found += clashes(folder, concerning=group)
    return found


def load_file(path: Path) -> PipelineFile:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_problem(path, text, err)]) from None
    positions: dict[Path_, tuple[int, int]] = {}
    if node is not None:
        _collect_positions(node, (), positions)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1:1: expected a mapping of keys (name, source, ...)"])
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, path, positions, data)) from None
    return PipelineFile(path=path, pipeline=pipeline, positions=positions)


def _yaml_problem(path: Path, text: str, err: yaml.YAMLError) -> str:
    """Point at where the broken construct starts (an unclosed quote's opening line),
    not where the parser gave up (often the end of the file)."""
    problem_mark = getattr(err, "problem_mark", None)
    context_mark = getattr(err, "context_mark", None)
    context = getattr(err, "context", None) or ""
    problem = getattr(err, "problem", None) or str(err)
    mark = problem_mark
    if context.startswith("while scanning") and context_mark and problem_mark:
        mark = context_mark  # e.g. a quote never closed: its opening is what to fix
        problem = f"{context}: {problem} (line {problem_mark.line + 1})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    if re.search(r":\s*\{\{", line):  # an unquoted template reads as a YAML mapping
        problem += ' (quote a value that starts with {{, e.g. prompt: "{{ name }} ...")'
    return f"{where}: not valid YAML: {problem}"


def _collect_positions(node: yaml.Node, prefix: Path_, out: dict[Path_, tuple[int, int]]) -> None:
    out.setdefault(prefix, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            # Point at the key itself: that is the line an analyst edits.
            out[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _collect_positions(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_positions(item, (*prefix, index), out)


def _where(path: Path, positions: dict[Path_, tuple[int, int]], key_path: Iterable) -> str:
    key_path = tuple(key_path)
    while key_path and key_path not in positions:
        key_path = key_path[:-1]
    line, col = positions.get(key_path, (1, 1))
    return f"{path}:{line}:{col}"


def _describe(
    err: ValidationError, path: Path, positions: dict[Path_, tuple[int, int]], data: dict
) -> list[str]:
    problems = []
    for item in err.errors():
        # Drop pydantic's union branch labels ("str", "list[str]") from the location.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and "[" in p))
        loc = tuple(p for p in loc if p not in ("str", "int", "function-after"))
        dotted = ".".join(str(p) for p in loc) or "(file)"
        message = _message(item, loc, data)
        problems.append(f"{_where(path, positions, loc)}: {dotted}: {message}")
    # A union reports one error per branch; say each place once.
    return list(dict.fromkeys(problems))


def _message(item: dict, loc: tuple, data: dict) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(
            field.alias or name
            for name, field in (model.model_fields.items() if model else [])
            if not field.exclude  # removed API options are named only to explain the error
        )
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        guess = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown key{guess} (expected one of: {', '.join(allowed)})"
    if kind == "missing":
        model = _model_at(loc[:-1])
        fields = {f.alias or n: f for n, f in model.model_fields.items()} if model else {}
        described = fields[loc[-1]].description if loc[-1] in fields else None
        return "required key is missing" + (f" ({described})" if described else "")
    message = item["msg"].removeprefix("Value error, ")
    if kind in ("string_type", "str_type") and isinstance(item.get("input"), dict):
        message += " (a value starting with {{ must be quoted in YAML)"
    return message


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Pipeline
    for part in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()} if model else {}
        if model is None or not isinstance(part, str) or part not in fields:
            return None
        annotation = fields[part].annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model

"""Phase one of loading: read the file, parse YAML, validate shape and cross-references.

No I/O beyond reading the one file and no engine imports. Every problem is reported with the file,
the YAML line, the path inside the document and what would be valid. Phase two (``build``) turns
the validated document into runtime objects.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from inferplane.config.errors import ConfigError, ConfigProblem, Loc
from inferplane.config.references import check_references
from inferplane.config.schema import InferplaneConfig


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 also reads `NO` (Norway),
    `ON`, `yes`... as booleans, which silently breaks country codes."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_config(path: str | Path, model_files: Sequence[str | Path] = ()) -> InferplaneConfig:
    """The config of a file; with ``model_files``, of the fleet file merged with the teams' model files
    (``inferplane.config.model_files``): the same ``InferplaneConfig`` either way."""
    if model_files:
        from inferplane.config.model_files import merge_files

        return merge_files(path, model_files).config
    return parse_config(read_text(path), source=path)


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem((), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [ConfigProblem((), f"cannot read: {exc}")]) from None


def parse_config(text: str, source: str | Path = "<config>") -> InferplaneConfig:
    document, root = parse_yaml(text, source)
    try:
        cfg = InferplaneConfig.model_validate(document)
    except ValidationError as exc:
        problems = [_problem(err, root) for err in exc.errors()]
        if document.get("teams"):
            problems = [_teams_hint(p) for p in problems]
        raise ConfigError(source, problems) from None
    problems = check_references(cfg)
    if problems:
        raise ConfigError(source, [ConfigProblem(p.loc, p.message, _line_of(root, p.loc)) for p in problems])
    return cfg


def _teams_hint(p: ConfigProblem) -> ConfigProblem:
    """A fleet file with teams may leave its models to the teams' model files: say so where they lack."""
    if p.message == "required" and (p.loc == ("models",) or (len(p.loc) == 3 and p.loc[0] == "substrates"
                                                              and p.loc[2] == "models")):
        return ConfigProblem(p.loc, "required, here or from the teams' model files (give them after the fleet "
                             "file: `inferplane validate FLEET MODEL_FILE...`)", p.line, p.source)
    return p


def parse_yaml(text: str, source: str | Path) -> tuple[dict, yaml.Node]:
    """The document (a mapping of sections) and its node tree (for lines), or a ConfigError."""
    try:
        document = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem((), f"not valid YAML: {problem}", line)]) from None
    if not isinstance(document, dict):
        raise ConfigError(source, [ConfigProblem((), "the top level must be a mapping of sections")])
    return document, root


def shape_problems(err: ValidationError, root: yaml.Node | None, schema: type[BaseModel]) -> list[ConfigProblem]:
    """Problems of a document ``schema`` refused, each with its path, line and what is valid."""
    return [_problem(e, root, schema) for e in err.errors()]


def line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based YAML line of the value at ``loc`` (or of its nearest existing parent)."""
    return _line_of(root, loc)


def _problem(err: Any, root: yaml.Node | None, schema: type[BaseModel] = InferplaneConfig) -> ConfigProblem:
    where = _where(err["loc"], schema)
    loc = where.loc
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _keys(where.owner)
        message = f"unknown key `{loc[-1]}`" + (f"; valid keys: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        message = "required"
    elif err["type"] in ("union_tag_not_found", "union_tag_invalid") and where.union is not None:
        # The union's tag is a key of the document (a substrate's `kind`): report it there.
        loc = (*loc, where.union.discriminator)
        valid = _either(where.union.variants)
        message = (f"required: {valid}" if err["type"] == "union_tag_not_found"
                   else f"Input should be {valid} (got {_short(err['ctx']['tag'])})")
    else:
        message = message.removeprefix("Value error, ")
        description = None if where.field is None else where.field.description
        if "input" in err and not _is_secretish(loc):
            message += f" (got {_short(err['input'])})"
        if description:
            message += f"; expected: {description}"
    return ConfigProblem(loc, message, _line_of(root, loc))


def _is_validator_tag(part: Any) -> bool:
    # pydantic inserts validator names such as "function-after[...]" into some locs.
    return isinstance(part, str) and ("[" in part and part.endswith("]"))


def _is_secretish(loc: Loc) -> bool:
    return any(isinstance(p, str) and ("key" in p or "secret" in p or "token" in p and "tokens" not in p) for p in loc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _either(names: Iterable[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


@dataclass(frozen=True, slots=True)
class _TaggedUnion:
    """A ``Field(discriminator=...)`` union: pydantic puts the chosen tag into error locs."""

    discriminator: str
    variants: dict[str, type[BaseModel]]


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a pydantic error loc points in the document and in the schema."""

    loc: Loc
    """The loc as the document spells it: union tags removed."""
    owner: type[BaseModel] | None
    """The model whose key the last part of ``loc`` is (for an unknown key: whose keys are valid)."""
    field: FieldInfo | None
    """That key's field, when the owner has it."""
    union: _TaggedUnion | None
    """The tagged union ``loc`` ends at, when its tag was missing or invalid."""


def _where(raw: Loc, schema: type[BaseModel] = InferplaneConfig) -> _Where:
    model: Any = schema
    owner: type[BaseModel] | None = None
    field: FieldInfo | None = None
    union: _TaggedUnion | None = None
    loc: list[str | int] = []
    for part in raw:
        if _is_validator_tag(part):
            continue
        if isinstance(part, int):
            loc.append(part)
            continue
        if union is not None and part in union.variants:
            model, union = union.variants[part], None
            continue
        union = None
        loc.append(part)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            owner, field, model = None, None, None
            continue
        owner, field = model, None
        name = next((n for n, f in model.model_fields.items() if n == part or f.alias == part), None)
        if name is None:
            continue  # a key of a dict of models, or an unknown key
        field = model.model_fields[name]
        union = _tagged_union(field.annotation, field.discriminator)
        model = _inner_model(field.annotation)
    return _Where(tuple(loc), owner, field, union)


def _tagged_union(annotation: Any, discriminator: Any = None) -> _TaggedUnion | None:
    """The tagged union ``annotation`` is or holds; ``discriminator``: the field's own, where pydantic
    moved an ``Annotated`` union's metadata onto the field (a field of the union type itself)."""
    if isinstance(discriminator, str):
        return _union_of(discriminator, get_args(annotation))
    if get_origin(annotation) is Annotated:
        disc = next((getattr(m, "discriminator", None) for m in annotation.__metadata__
                     if isinstance(getattr(m, "discriminator", None), str)), None)
        if disc is not None:
            return _union_of(disc, get_args(annotation.__origin__))
    for arg in get_args(annotation):
        found = _tagged_union(arg)
        if found is not None:
            return found
    return None


def _union_of(disc: str, variants: tuple) -> _TaggedUnion:
    by_tag = {}
    for variant in variants:
        for tag in get_args(variant.model_fields[disc].annotation):
            by_tag[tag.value if isinstance(tag, enum.Enum) else str(tag)] = variant
    return _TaggedUnion(disc, by_tag)


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based YAML line of the value at ``loc`` (or of its nearest existing parent)."""
    node = root
    best = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if nxt is None:
                return best
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return best
        best = node.start_mark.line + 1
    return best

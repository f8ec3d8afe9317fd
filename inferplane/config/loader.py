"""Phase one of loading: read the file, parse YAML, validate shape and cross-references.

No I/O beyond reading the one file and no engine imports. Every problem is reported with the file,
the YAML line, the path inside the document and what would be valid. Phase two (``build``) turns
the validated document into runtime objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

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


def load_config(path: str | Path) -> InferplaneConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem((), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [ConfigProblem((), f"cannot read: {exc}")]) from None
    return parse_config(text, source=path)


def parse_config(text: str, source: str | Path = "<config>") -> InferplaneConfig:
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
    try:
        cfg = InferplaneConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, [_problem(err, root) for err in exc.errors()]) from None
    problems = check_references(cfg)
    if problems:
        raise ConfigError(source, [ConfigProblem(p.loc, p.message, _line_of(root, p.loc)) for p in problems])
    return cfg


def _problem(err: Any, root: yaml.Node | None) -> ConfigProblem:
    loc: Loc = tuple(part for part in err["loc"] if not _is_validator_tag(part))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key `{loc[-1]}`" + (f"; valid keys: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        message = "required"
    else:
        message = message.removeprefix("Value error, ")
        description = _description(loc)
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


def _walk_model(loc: Loc) -> tuple[type[BaseModel] | None, Any]:
    """The pydantic model owning the last part of ``loc`` and that field's info, if resolvable."""
    model: Any = InferplaneConfig
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None, None
        fields = model.model_fields
        name = next((n for n, f in fields.items() if n == part or f.alias == part), None)
        if name is None:
            return model, None
        field = fields[name]
        model = _inner_model(field.annotation)
    return model, field


def _inner_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _description(loc: Loc) -> str | None:
    _, field = _walk_model(loc)
    return None if field is None else field.description


def _allowed_keys(loc: Loc) -> list[str]:
    model, field = _walk_model(loc) if loc else (InferplaneConfig, None)
    target = _inner_model(field.annotation) if field is not None else model
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        return []
    return sorted(f.alias or n for n, f in target.model_fields.items())


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

"""Config errors. Each problem names the file, the path inside it, the line, and what is valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """``("substrates", 2, "cost", "x")`` -> ``substrates[2].cost.x``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    loc: Loc
    message: str
    line: int | None = None
    source: str | None = None
    """The file the problem is in, when it is not the error's own (a fleet file merged with model files)."""

    @property
    def path(self) -> str:
        return format_loc(self.loc)


class ConfigError(Exception):
    """One or more problems in a config file. ``str()`` lists them, one per line."""

    def __init__(self, source: Path | str, problems: list[ConfigProblem]) -> None:
        self.source = str(source)
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        lines = [head]
        for p in self.problems:
            source = p.source or self.source
            where = f"{source}:{p.line}" if p.line is not None else source
            lines.append(f"  {where}: {p.path}: {p.message}")
        return "\n".join(lines)

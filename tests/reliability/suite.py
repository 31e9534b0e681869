"""The registry of scenarios and the table they make.

Each section module defines ``SECTION`` (its heading) and ``SCENARIOS``, a list of functions
``(Context) -> list[Row]``. Adding a scenario is adding it to its module's list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from tests.reliability import Context, Row

#: The table's order of sections; a section module not named here comes last.
ORDER = [
    "crashes",
    "outages",
    "outages_sqlite",
    "hostile_input",
    "slow_clients",
    "forged",
    "hostile_subscribers",
    "provider_side",
    "admin_surface",
]
HELPERS = {"suite"}


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


_FOUND = [info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])]
MODULES = [
    f"tests.reliability.{name}"
    for name in sorted(_FOUND, key=_order)
    if name not in HELPERS and not name.startswith("_")
]

Scenario = Callable[[Context], list[Row]]


def sections() -> Iterator[ModuleType]:
    for name in MODULES:
        yield importlib.import_module(name)


def scenarios() -> Iterator[tuple[str, Scenario]]:
    """(section heading, scenario function) for every registered scenario, in table order."""
    for module in sections():
        for scenario in module.SCENARIOS:
            yield module.SECTION, scenario


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _figures(figures: dict[str, object]) -> str:
    return "<br>".join(f"{_cell(k)}: **{_cell(v)}**" for k, v in figures.items())


def render(rows: list[Row], heading: str) -> str:
    """The Markdown table, one table per section, problems spelled out under it."""
    lines = [heading, ""]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += [
                "",
                f"## {section}",
                "",
                "| Scenario | Figures | How | Result |",
                "|---|---|---|---|",
            ]
        result = "ok" if row.ok else "**FAILED**: " + "; ".join(row.problems)
        lines.append(
            f"| {_cell(row.scenario)} | {_figures(row.figures)} | {_cell(row.method)} "
            f"| {_cell(result)} |"
        )
    failed = [row for row in rows if not row.ok]
    lines += ["", f"{len(rows)} scenarios, {len(failed)} failed.", ""]
    return "\n".join(lines)

"""One result row per fault-injection scenario, kept in a JSON file for the README's table.

The fault tests (``tests/e2e/test_faults*.py``) call :func:`record` once per scenario with what
was injected and what the store holds afterwards, *then* assert the promise; so a scenario
that loses or duplicates records still leaves its row. ``scripts/reliability_table.py``
renders the file as markdown.

The file is ``$THYME_RELIABILITY_FILE``, else ``build/reliability.json`` in the repository
(``build/`` is not tracked). Rows are keyed by scenario: a rerun replaces its row.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
ENV_FILE: Final = "THYME_RELIABILITY_FILE"
DEFAULT_FILE: Final = REPO / "build" / "reliability.json"


def results_file() -> Path:
    configured = os.environ.get(ENV_FILE)
    return Path(configured) if configured else DEFAULT_FILE


@dataclass
class Result:
    """What one scenario injected and what the store held afterwards."""

    scenario: str
    injected: str
    produced: int
    """Records put on the stream (valid and rejected)."""
    in_store: int
    """Rows plus dead letters the store holds."""
    duplicates: int
    """Store entries beyond one per produced record."""
    lost: int
    """Produced records the store does not hold (valid ones as rows, rejected ones as dead letters)."""
    seconds: float = 0.0
    """Wall time of the scenario (start of the consumer to the final check)."""
    notes: str = ""
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.lost == 0 and self.in_store == self.produced


def tally(
    valid: set[int], rejected: Counter[str], applied: Counter[int], dead_letters: Counter[str]
) -> tuple[int, int, int, int]:
    """``(produced, in_store, duplicates, lost)`` from what was produced and what the store holds.

    ``valid`` are the ``n`` of the valid records, ``rejected`` the expected dead letters by reason;
    ``applied`` counts rows per ``n``, ``dead_letters`` counts dead letters per reason.
    """
    produced = len(valid) + sum(rejected.values())
    in_store = sum(applied.values()) + sum(dead_letters.values())
    duplicates = sum(c - 1 for n, c in applied.items() if c > 1)
    duplicates += sum(max(0, dead_letters[r] - rejected[r]) for r in dead_letters)
    duplicates += sum(c for n, c in applied.items() if n not in valid)  # rows nobody produced
    lost = len(valid - set(applied)) + sum(max(0, rejected[r] - dead_letters[r]) for r in rejected)
    return produced, in_store, duplicates, lost


def record(result: Result, path: Path | None = None) -> Result:
    """Add ``result`` to the results file (replacing an earlier row of the same scenario)."""
    path = path or results_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in load(path) if r.get("scenario") != result.scenario]
    rows.append(asdict(result))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(path)
    return result


def load(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or results_file()
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of scenario rows")
    return [r for r in data if isinstance(r, dict)]

"""``wsss-label IMAGES ... --out OUT --redo rejected|fix --review FILE``: relabel only the images a
reviewer marked, into the same OUT, with other settings if wanted, keeping every other mask.

How run.json stays true to its masks (see docs/review.md):

- ``settings`` stays the settings of the run that made OUT (the *base*); a plain rerun is still
  compared with it, so resuming OUT keeps working.
- Each redo appends a record to ``redos``: ``{"n", "started_at", "mark", "review", "settings"
  (the redo's own, whole), "changed" (the decisive settings that differ from the base)}``; an
  image entry relabelled by it carries ``"redo": n``. An entry without ``redo`` was made with
  ``settings``. A record no entry refers to any more (an image redone again, --overwrite) is dropped.
- A redo may change any decisive setting but the class list (``class_names``: mask values
  would mean other classes).
- The masks of the images to redo are removed when the redo starts (as --overwrite does), so a
  redo that is killed never leaves a mask whose entry names other settings; rerunning the same
  redo finishes it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from clipseg_cli.errors import ConfigError
from clipseg_cli.labeling import LABEL_DECISIVE, OutputLayout, Plan, WorkItem
from clipseg_cli.review import Review, load_review
from clipseg_cli.run_settings import Decisive, differences, read_record

REDO_MARKS = ("rejected", "fix")
# What a redo must keep: the mask values' meaning.
REDO_FIXED: tuple[Decisive, ...] = (Decisive("class_names"),)


@dataclass
class Redo:
    """A redo's plan: its run.json record, the base settings, and what the review asked."""

    record: dict[str, Any]
    base_settings: dict[str, Any]
    review: Review
    targets: list[WorkItem] = field(default_factory=list)  # marked images to relabel (plan.todo)
    not_found: list[str] = field(default_factory=list)  # marked images that are not labelled images of IMAGES


def next_number(redos: Sequence[Any]) -> int:
    numbers = [r.get("n") for r in redos if isinstance(r, dict) and isinstance(r.get("n"), int)]
    return max(numbers, default=0) + 1


def plan_redo(layout: OutputLayout, plan: Plan, settings: dict[str, Any], mark: str, review_path: Path) -> Redo:
    """Turn ``plan`` (made without --overwrite) into a redo of the images ``review_path``
    marks ``mark``: those go to ``plan.todo`` (their masks are removed first: ``plan.stale``),
    every other finished image stays as it is, unfinished unmarked ones are left for a later
    resume. ConfigError (one line) when OUT has no run to redo or the class list changed."""
    if mark not in REDO_MARKS:
        raise ConfigError(f"--redo must be one of {', '.join(REDO_MARKS)}, got {mark!r}")
    record = read_record(layout.run_file)
    if record is None or not isinstance(record.get("settings"), dict):
        raise ConfigError(f"--redo needs an earlier run in {layout.root} (its run.json): nothing to redo")
    base = record["settings"]
    fixed = differences(base, settings, REDO_FIXED)
    if fixed:
        raise ConfigError(
            f"--redo keeps the classes of {layout.root} ({fixed[0][1]!r}); these settings have {fixed[0][2]!r}: use another --out"
        )
    review = load_review(review_path)
    wanted = set(review.images(mark))
    items = {item.rel: item for item in [*plan.done, *plan.todo]}
    targets = [items[rel] for rel in sorted(wanted) if rel in items]
    chosen = {item.rel for item in targets}
    plan.done = [item for item in plan.done if item.rel not in chosen]
    plan.todo = targets
    plan.stale = list(targets)
    changed = {key: after for key, _before, after in differences(base, settings, LABEL_DECISIVE)}
    redo_record = {
        "n": next_number(record.get("redos") or []),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mark": mark,
        "review": str(Path(review_path).resolve()),
        "settings": settings,
        "changed": changed,
    }
    return Redo(redo_record, base, review, targets, sorted(wanted - set(items)))

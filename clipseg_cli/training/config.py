"""Training settings as dataclasses whose fields say everything about themselves.

Each field of a method's config is declared with :func:`setting`: its default, its help text, the
command-line flags it is given with, its limits, and whether it *defines* the run (``--resume``
keeps it). The command lines of ``retrain``, ``refine train`` and ``train-cam <method>`` are
generated from these fields, and :meth:`RunConfig.validate` checks the limits with one-line errors
that name the flag.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from clipseg_cli.errors import ConfigError
from clipseg_cli.training.precision import PRECISIONS
from clipseg_cli.training.run import refuse_conflicts


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    flags: Sequence[str] = (),
    defining: bool = True,
    minimum: float | None = None,
    positive: bool = False,
    choices: Sequence[str] | None = None,
    cli: bool = True,
    argument: bool = False,
    cli_default: str | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    hidden_flags: Sequence[str] = (),
) -> Any:
    """A config field with its command-line description.

    ``flags``: option names (default ``--field-name``); ``hidden_flags``: deprecated aliases that work
    but are not shown; ``defining``: kept by ``--resume`` (a different explicit value is an error);
    ``minimum`` / ``positive`` / ``choices``: checked by :meth:`RunConfig.validate`; ``cli=False``: set
    by the command itself, not an option; ``argument``: a positional argument; ``cli_default``: the
    default as typed on the command line (e.g. scales ``"0.5,0.75,1"``).
    """
    meta = {
        "help": help,
        "flags": tuple(flags),
        "hidden_flags": tuple(hidden_flags),
        "defining": defining,
        "minimum": minimum,
        "positive": positive,
        "choices": tuple(choices) if choices is not None else None,
        "cli": cli,
        "argument": argument,
        "cli_default": cli_default,
        "metavar": metavar,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The main flag of a field (``--crop`` for ``crop``)."""
    flags = f.metadata.get("flags") or ()
    return flags[0] if flags else "--" + f.name.replace("_", "-")


def parse_scales(text: str, option: str = "--scales") -> tuple[float, ...]:
    """``"0.5,0.75,1"`` -> (0.5, 0.75, 1.0); ConfigError unless every value is a number in (0, 8]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers such as 0.5,0.75,1; got {text!r}") from None
    if not values or any(not (0.0 < v <= 8.0) for v in values):
        raise ConfigError(f"{option} values must be in (0, 8]; got {text!r}")
    return values


def _to_json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _from_json(tp: Any, value: Any) -> Any:
    """A JSON value back to the field's type (Path, tuples, numbers)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_json(args[0], value) if len(args) == 1 else value
    if tp is Path:
        return Path(value)
    if origin is tuple:
        args = typing.get_args(tp)
        return tuple(_from_json(args[0] if args else Any, v) for v in value)
    if origin is list:
        args = typing.get_args(tp)
        return [_from_json(args[0] if args else Any, v) for v in value]
    if tp in (int, float, str, bool):
        return tp(value)
    return value


@dataclass(kw_only=True)
class RunConfig:
    """What every training run is asked for; a method's config adds its own fields."""

    images: Path | None = setting(None, "Training images (folder, searched recursively).", argument=True,
                                  metavar="IMAGES", defining=False)  # fmt: skip
    out: Path = setting(help="Run folder: last.pt, metrics.jsonl, loss.png, run.json.", flags=("--out", "-o"),
                        metavar="DIR", defining=False)  # fmt: skip
    class_names: list[str] = setting(default_factory=list, cli=False)
    class_prompts: list[str] = setting(default_factory=list, cli=False)  # the class set's prompt text per class
    batch: int = setting(8, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    seed: int = setting(0, "Seed of initialisation, sample order and augmentation.")
    save_every: int = setting(1000, "Write last.pt every N iterations.", minimum=1, defining=False)
    workers: int = setting(-1, "Data-loading processes (-1: 0 on CPU, up to 4 on CUDA).", defining=False)
    precision: str = setting(
        "fp32", "fp32 | bf16: autocast the forward pass and loss to bfloat16 (CUDA; CPU works too).",
        choices=PRECISIONS, defining=False,
    )  # fmt: skip
    review: Path | None = setting(
        None, "Marks of `wsss-label report` (review.json): images marked rejected are left out of training. "
        "Default: MASKS/../review.json when it exists (commands that train on masks).", metavar="FILE",
    )  # fmt: skip

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def defining_names(cls) -> list[str]:
        return [f.name for f in cls.fields() if f.metadata.get("defining", False)]

    def to_json(self) -> dict[str, Any]:
        return {f.name: _to_json(getattr(self, f.name)) for f in self.fields()}

    def apply_saved(self, saved: Mapping[str, Any], explicit: Sequence[str] = ()) -> None:
        """Take the defining settings of a saved run (``--resume``); ConfigError when one of the
        ``explicit`` settings (given on the command line) differs from the run's."""
        refuse_conflicts(dict(saved), self.to_json(), [n for n in explicit if n in self.defining_names()])
        hints = typing.get_type_hints(type(self))
        for name in self.defining_names():
            if name in saved:
                setattr(self, name, _from_json(hints[name], saved[name]))

    def validate(self) -> None:
        """The limits of every field, as one-line ConfigErrors naming the flag."""
        for f in self.fields():
            value, meta, flag = getattr(self, f.name), f.metadata, flag_of(f)
            if value is None:
                continue
            if meta.get("minimum") is not None and value < meta["minimum"]:
                low = meta["minimum"]
                raise ConfigError(f"{flag} must be at least {int(low) if float(low).is_integer() else low}, got {value}")
            if meta.get("positive") and not value > 0:
                raise ConfigError(f"{flag} must be positive, got {value}")
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}; got {value!r}")

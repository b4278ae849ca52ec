"""The training commands, generated from the method registry (:mod:`clipseg_cli.methods`).

``wsss-label retrain`` (the ``segmenter``), ``wsss-label refine train --method NAME`` (every
``refiner``) and ``wsss-label train-cam NAME`` (every ``cam`` method) take their arguments and
options from the fields of the method's config dataclass (help, flags, defaults, limits, renamed
flags: :func:`clipseg_cli.training.config.setting`), plus the options every training command has
(:mod:`clipseg_cli.cli.conventions`): ``--classes``, ``--labels``/``--annotations`` (methods trained
from image-level labels), ``--resume`` and ``--device``. A new method gets its command by being
registered.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import typer

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.errors import EXIT_OK, ConfigError
from clipseg_cli.io.lock import output_lock
from clipseg_cli.training.config import flag_of, parse_scales

if typing.TYPE_CHECKING:
    from clipseg_cli.methods.base import LearnedMethod
    from clipseg_cli.training.config import RunConfig

INTERRUPTED = "interrupted; training state saved in last.pt, continue with --resume"
KW = inspect.Parameter.KEYWORD_ONLY
# Adjusts the parsed values (and the explicitly given names) before the config is built.
Adapter = Callable[[dict[str, Any], list[str]], None]


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, KW, annotation=annotation, default=default)


def _field_param(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    """The Typer argument or option of a config field."""
    meta = f.metadata
    if meta.get("argument"):
        return _param(f.name, Path, typer.Argument(..., help=meta["help"], metavar=meta.get("metavar")))
    flags = tuple(meta.get("flags") or (flag_of(f),))
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = ...  # required
    option = {"help": meta.get("help", ""), "metavar": meta.get("metavar")}
    if meta.get("cli_default") is not None:  # given as text, parsed by the command (scales)
        return _param(f.name, str, typer.Option(meta["cli_default"], *flags, **option))
    if meta.get("choices"):  # the parser checks them and the help lists them
        return _param(f.name, Literal[tuple(meta["choices"])], typer.Option(default, *flags, **option))  # type: ignore[misc]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        tp = Optional[inner]
    if tp is bool and default is True:  # on by default: --no-NAME turns it off
        flags = (f"{flags[0]}/--no-{flags[0].lstrip('-')}", *flags[1:])
    return _param(f.name, tp, typer.Option(default, *flags, **option))


def _cli_fields(configs: Sequence[type[RunConfig]]) -> list[tuple[dataclasses.Field, Any]]:
    """The command-line fields of ``configs`` (their union, first declaration wins): arguments, the
    methods' own settings, then those every method has."""
    seen: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cfg in configs:
        hints = typing.get_type_hints(cfg)
        for f in dataclasses.fields(cfg):
            if f.metadata.get("cli", True) and f.name not in seen:
                seen[f.name] = (f, hints[f.name])
    items = list(seen.values())
    last = ("seed", "save_every", "workers", "precision")
    return (
        [x for x in items if x[0].metadata.get("argument")]
        + [x for x in items if not x[0].metadata.get("argument") and x[0].name not in last]
        + [x for x in items if x[0].name in last]
    )


def build_config(method: type[LearnedMethod], values: dict[str, Any], classes: str) -> RunConfig:
    """The method's config from the parsed command line (scales parsed, classes loaded)."""
    from clipseg_cli.data.classes import load_class_set

    class_set = load_class_set(classes)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(method.Config):
        if f.name in values and f.name not in ("class_names", "class_prompts"):
            value = values[f.name]
            if f.metadata.get("cli_default") is not None:
                value = parse_scales(value, flag_of(f))
            kwargs[f.name] = value
    return method.Config(class_names=list(class_set.classes), class_prompts=list(class_set.prompts), **kwargs)


def run_training(method: type[LearnedMethod], values: dict[str, Any], explicit: list[str]) -> int:
    """One training run from the command line: config, labels, CLIP loader, progress, summary."""
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.cli.progress import Progress
    from clipseg_cli.cli.training_bar import TrainingReporter
    from clipseg_cli.data.labels import read_label_source
    from clipseg_cli.device import resolve_device
    from clipseg_cli.methods.base import MethodInputs
    from clipseg_cli.training.engine import Trainer

    cfg = build_config(method, values, values["classes"])
    if "method" in {f.name for f in dataclasses.fields(cfg)}:
        cfg.method = method.name  # type: ignore[attr-defined]
    cfg.validate()
    device = resolve_device(values["device"])
    labels, annotations = values.get("labels"), values.get("annotations")
    index = None if labels is None and annotations is None else read_label_source(labels, annotations)
    fields = [f.name for f in dataclasses.fields(cfg)]
    explicit_fields = [n for n in explicit if n in fields] + (["class_names"] if "classes" in explicit else [])
    inputs = MethodInputs(labels=index, load_clip=load_clip_model)
    progress = Progress()
    reporter = TrainingReporter(progress)
    trainer = Trainer(method(cfg, device, inputs), resume=values["resume"], explicit=explicit_fields, reporter=reporter)
    reporter.message(trainer.hooks.describe())
    with progress:
        summary = trainer.run()
    best = (summary.get("val") or {}).get("best")
    tail = f", best val mIoU {100 * best['miou']:.2f} at iteration {best['iteration']}" if best else ""
    console.print(f"done: {summary['iteration']} iterations, final loss {summary['final_loss']}{tail} -> {cfg.out}")
    return EXIT_OK


def make_command(
    methods: Sequence[type[LearnedMethod]],
    *,
    help: str,
    choose: str | None = None,
    extra: Sequence[inspect.Parameter] = (),
    adapt: Adapter | None = None,
) -> Callable[..., None]:
    """A Typer command training one of ``methods`` (``choose``: the option picking it, e.g.
    ``--method``); ``extra``: more options of this command, turned into config values by ``adapt``."""
    uses_labels = any(m.family != "segmenter" for m in methods)
    fields = _cli_fields([m.Config for m in methods])
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params += [_field_param(f, tp) for f, tp in fields if f.metadata.get("argument")]
    if uses_labels:
        params += [
            _param("labels", Optional[Path], cv.labels_option(" On --resume: default the run's.")),
            _param("annotations", Optional[Path], cv.annotations_option()),
        ]
    params.append(_param("classes", str, cv.classes_option()))
    if choose:
        names = [m.name for m in methods]
        params.append(_param("method", Literal[tuple(names)], typer.Option(names[0], choose, help=f"The {methods[0].family}.")))  # type: ignore[misc]
    params += [_field_param(f, tp) for f, tp in fields if not f.metadata.get("argument")]
    params += [*extra, _param("resume", bool, cv.resume_option()), _param("device", str, cv.device_option())]
    by_name = {m.name: m for m in methods}
    field_flags = {f.name: flag_of(f) for f, _ in fields}

    @handle_errors(interrupted=INTERRUPTED)
    def run(values: dict[str, Any], explicit: list[str]) -> int:
        method = by_name[values.get("method", methods[0].name)]
        own = {f.name for f in dataclasses.fields(method.Config)}
        for name in explicit:
            if name in field_flags and name not in own:
                raise ConfigError(f"{field_flags[name]} is not a setting of the {method.name} {method.family}")
        if adapt is not None:
            adapt(values, explicit)
        with output_lock(values["out"]):  # one run per run folder, checked before anything loads
            return run_training(method, values, explicit)

    def command(ctx: typer.Context, **values: Any) -> None:
        explicit = [n for n in values if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]
        raise typer.Exit(run(values, explicit))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = help
    return command


def command_class(methods: Sequence[type[LearnedMethod]]) -> type[cv.WsssCommand]:
    """The conventions' command class, with the renamed flags of the methods' fields as deprecated
    aliases (an old flag keeps working with a warning)."""
    renamed: dict[str, str] = {}
    for m in methods:
        for f in dataclasses.fields(m.Config):
            for old in f.metadata.get("hidden_flags") or ():
                renamed[old.lstrip("-").replace("-", "_")] = flag_of(f)
    return cv.command_class(**renamed)


def register_family(group: typer.Typer, family: str) -> None:
    """``train-cam NAME`` for every registered CAM method."""
    from clipseg_cli.methods import all_methods

    for name, method in all_methods(family).items():
        cv.command(group, name, make_command([method], help=method.summary), cls=command_class([method]),
                   no_args_is_help=True)  # fmt: skip

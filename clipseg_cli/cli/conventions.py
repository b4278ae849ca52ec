"""The command-line conventions every `wsss-label` command follows, in one place.

- Help: usage lines name arguments in capitals (``wsss-label retrain [OPTIONS] IMAGES MASKS``);
  every option shows what it takes as a metavar: ``PATH``/``FILE``/``DIR``, ``INT``, ``FLOAT``,
  ``TEXT``, the choices ``a|b|c`` for a fixed set (validated by the parser), nothing for a flag.
  Options that are shared across commands come from the factories below, with the same
  names, short forms, metavars and wording everywhere.
- Names: training length is ``--iters`` (train-cam vitpcm also takes ``--epochs``, its unit),
  warm-up is ``--warmup-iters`` (iterations), images per step ``--batch-size``; labels are
  ``-l/--labels FILE`` or ``--annotations DIR`` (exactly one, where a command needs labels).
- Errors: a usage error is one line, ``error: ...`` with exit 2, like every other error; a
  mistyped command is answered with the command it resembles.
- Renamed options keep their old name as a hidden, deprecated alias (:data:`DEPRECATED`): it
  still works and prints one ``warning:`` line naming the new one.

Commands are registered with :func:`command` (their class :class:`WsssCommand`) on apps made by
:func:`make_app` (class :class:`WsssGroup`).
"""

from __future__ import annotations

import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Callable, Sequence

import typer
from typer import _click  # Typer's own copy of Click (Typer >= 0.26; the range is pinned in pyproject.toml)
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from clipseg_cli.cli.console import print_error, warn
from clipseg_cli.errors import EXIT_INTERRUPTED, EXIT_USAGE

# Old option name -> new one, for options renamed with the same meaning (the old name keeps working).
DEPRECATED: dict[str, str] = {
    "--batch": "--batch-size",
}

HELP_OPTIONS = ["-h", "--help"]
CONTEXT_SETTINGS = {"help_option_names": HELP_OPTIONS}


# -- help ----------------------------------------------------------------------------------------
def _metavar(param: TyperOption) -> str:
    """What an option takes, as its help shows it."""
    if getattr(param, "is_flag", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # pragma: no cover - older Typer: Click's own type names
        choices = getattr(param.type, "choices", None)
        return "|".join(map(str, choices)) if choices else str(param.type.name).upper()
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    names = {int: "INT", float: "FLOAT", str: "TEXT", bool: ""}
    if desc.is_tuple:
        return " ".join(names.get(a, "TEXT") for a in getattr(annotation, "__args__", ()))
    if desc.is_list:
        inner = getattr(annotation, "__args__", (str,))[0]
        return names.get(inner, "TEXT")
    return names.get(annotation, "TEXT")


def _no_type(ctx: _click.Context) -> None:
    return None


def apply_metavars(params: Sequence[Any]) -> None:
    """Capital names for arguments (and no type beside them), a metavar for every option."""
    for param in params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "arg").upper()
            param.display_type_rich = _no_type  # the name says it; no "<path>" beside it
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _metavar(param)


class _HelpWithoutType:
    """-h/--help shown without a type."""

    def get_help_option(self, ctx: _click.Context) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class WsssCommand(_HelpWithoutType, TyperCommand):
    """A command that follows the conventions: capital argument names, a metavar on every option,
    deprecated option names rewritten (with a warning) before parsing."""

    aliases: dict[str, str] = DEPRECATED

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_metavars(self.params)

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._rename(args))

    def _rename(self, args: list[str]) -> list[str]:
        """Deprecated option names -> current ones (only where this command has the new name
        and not the old one), each with one warning."""
        declared = {opt for p in self.params for opt in (*p.opts, *getattr(p, "secondary_opts", ()))}
        out = []
        for arg in args:
            if arg == "--":
                out += args[len(out) :]
                break
            name, eq, value = arg.partition("=")
            new = self.aliases.get(name)
            if new and new in declared and name not in declared:
                warn_deprecated(name, new)
                arg = new + eq + value
            out.append(arg)
        return out


def command_class(**renamed: str) -> type[WsssCommand]:
    """A :class:`WsssCommand` with extra deprecated names of its own (``old="--new"``, the old
    name spelt with underscores for dashes, e.g. ``warmup="--warmup-iters"``)."""
    extra = {"--" + old.replace("_", "-"): new for old, new in renamed.items()}
    return type("WsssCommandWithAliases", (WsssCommand,), {"aliases": {**DEPRECATED, **extra}})


def _one_line(exc: _click.exceptions.ClickException) -> str:
    """A Click error as ``error: ...`` on one line, with where to find help."""
    message = " ".join(exc.format_message().split()).replace(": Value error, ", ": ")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message = message.rstrip(".") + f" (see {ctx.command_path} --help)"
    return message


_NoArgsIsHelp = getattr(_click.exceptions, "NoArgsIsHelpError", ())


class WsssGroup(_HelpWithoutType, TyperGroup):
    """The app (and its sub-groups): usage errors as one ``error:`` line with exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_metavars(self.params)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except _NoArgsIsHelp as exc:  # a bare command: its help, as Typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            print_error(_one_line(exc))
            sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
        except typer.Abort:
            print_error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)


def make_app(name: str | None = None, help: str | None = None, **kwargs: Any) -> typer.Typer:
    """A Typer app (or sub-group) with the shared settings."""
    return typer.Typer(
        name=name,
        help=help,
        cls=WsssGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings=CONTEXT_SETTINGS,
        **kwargs,
    )


def command(app: typer.Typer, name: str, fn: Callable[..., Any], cls: type[WsssCommand] = WsssCommand, **kwargs: Any) -> None:
    """Register ``fn`` as command ``name`` of ``app`` with the conventions' command class."""
    app.command(name, cls=cls, **kwargs)(fn)


def suggest_command(word: str, commands: Sequence[str]) -> str | None:
    """The command ``word`` is a likely typo of (``evl`` -> ``eval``), or None."""
    matches = get_close_matches(word, list(commands), n=1, cutoff=0.6)
    return matches[0] if matches else None


def looks_like_path(word: str) -> bool:
    """An existing path, or one spelt like a path (a separator, a dot): the default command's IMAGES."""
    return Path(word).exists() or "/" in word or "\\" in word or "." in word or word.startswith("~")


# -- shared options -----------------------------------------------------------------------------
LABELS_FORMAT = 'JSON {"rel/path.jpg": ["cat", ...]} or lines "rel/path.jpg cat person"'
WEIGHTS_DEFAULT = "default: $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt, downloaded if absent"


def labels_option(extra: str = "", required: bool = True) -> Any:
    """``-l/--labels FILE``; ``required``: this or --annotations must be given."""
    need = " One of --labels / --annotations is required." if required else ""
    return typer.Option(None, "--labels", "-l", metavar="FILE", help=f"Image-level labels: {LABELS_FORMAT}.{need}{extra}")


def annotations_option(extra: str = "", required: bool = True) -> Any:
    need = " One of --labels / --annotations is required." if required else ""
    return typer.Option(
        None, "--annotations", metavar="DIR",
        help=f"Folder of VOC XML files; an image's labels are its distinct object names (instead of --labels).{need}{extra}",
    )  # fmt: skip


def classes_option(help: str = 'voc | coco | FILE (one class per line, "name: synonym, ...") | "a,b,c"; mask value 1 + index.') -> Any:
    return typer.Option("voc", "--classes", "-c", metavar="SET", help=help)


def out_option(help: str, default: Any = ..., metavar: str = "DIR") -> Any:
    return typer.Option(default, "--out", "-o", metavar=metavar, help=help)


def weights_option(help: str = "CLIP checkpoint") -> Any:
    return typer.Option(None, "--weights", metavar="FILE", help=f"{help} ({WEIGHTS_DEFAULT}).")


def device_option() -> Any:
    return typer.Option("auto", "--device", metavar="auto|cpu|cuda", help="Where the model runs (cuda:N for one GPU).")


def overwrite_option() -> Any:
    return typer.Option(False, "--overwrite", help="Redo every image; without it, images with a mask are kept (resume).")


def checkpoint_option(help: str) -> Any:
    return typer.Option(..., "--checkpoint", metavar="FILE", help=help)


def scales_option(default: str, help: str) -> Any:
    return typer.Option(default, "--scales", metavar="S,S,...", help=help)


def batch_size_option(default: int | None, extra: str = "", what: str = "Images per training iteration.") -> Any:
    return typer.Option(default, "--batch-size", help=f"{what}{extra}")


def warmup_iters_option(default: int | None, extra: str = "") -> Any:
    return typer.Option(default, "--warmup-iters", help=f"Iterations of linear learning-rate warm-up.{extra}")


def resume_option() -> Any:
    return typer.Option(False, "--resume", help="Continue the run in --out from last.pt exactly.")


def review_option(help: str) -> Any:
    """``--review FILE``: a review.json of the gallery (``wsss-label report``)."""
    return typer.Option(None, "--review", metavar="FILE", help=help)


def deprecated_option(default: Any, name: str, instead: str) -> Any:
    """A hidden old option name kept working for scripts (its value is converted by the command)."""
    return typer.Option(default, name, hidden=True, help=f"Deprecated: use {instead}.")


def warn_deprecated(name: str, instead: str) -> None:
    warn(f"{name} is deprecated, use {instead}")

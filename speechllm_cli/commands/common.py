"""What the subcommand modules share: ``--config FILE``, failing with a message, defaults taken from a dataclass.

Example (a stage module; speechllm_cli/cli.py calls its ``register``)::

    def decode_cmd(beam: int = option(DecodeOptions, "beam", help="Beam size."), config: Path | None = ConfigOption):
        ...

    def register(app: typer.Typer) -> None:
        app.command("decode")(decode_cmd)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml

from speechllm_cli.utils.options import field_default

logger = logging.getLogger("speechllm")


def _load_yaml_defaults(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """``--config FILE``: its keys become the defaults of this command's options."""
    if value is None:
        return value
    try:
        data = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {value}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: expected a mapping of option names to values")
    known = {p.name for p in ctx.command.params if p.name not in (None, "config")}
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise typer.BadParameter(f"{value}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = typer.Option(
    None, "--config", callback=_load_yaml_defaults, is_eager=True,
    help="YAML file of option values; command-line options win.",
)


def option(cls: type, field: str, *flags: str, **kwargs: Any) -> Any:
    """``typer.Option`` whose default is the default of the dataclass ``cls``'s ``field`` (its one source)."""
    return typer.Option(field_default(cls, field), *flags, **kwargs)


def fail(message: str) -> NoReturn:
    """Log ``message`` as an error and exit 1."""
    logger.error(message)
    raise typer.Exit(code=1)

"""The command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from tqdm import tqdm

try:  # typer ≥ 0.29 carries its own click; older ones use the click package
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # pragma: no cover
    from click import ClickException as UsageProblem

from nixlayer.closure import DEFAULT_STORE_DIR
from nixlayer.docker_archive import write_docker_archive
from nixlayer.errors import NixlayerError
from nixlayer.image import (
    DEFAULT_MTIME,
    MAX_TIMESTAMP,
    ImageSettings,
    default_name,
    host_architecture,
    parse_architecture,
    parse_created,
    parse_name,
    source_date_epoch,
    timestamp,
)
from nixlayer.output import atomic_output
from nixlayer.plan import Plan, make_plan, plan_table
from nixlayer.readers import INPUT_FORMATS, read_closure
from nixlayer.store import with_disk_nar_sizes
from nixlayer.strategies import STRATEGIES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn a Nix closure into a layered, reproducible container image.",
)

ClosureArg = Annotated[
    Path,
    typer.Argument(
        help="The closure: `nix path-info --json --recursive` output, a structured-attrs "
        "file or exportReferencesGraph text; - for stdin.",
        show_default=False,
    ),
]
InputFormat = Annotated[
    str | None,
    typer.Option(help=f"Force the input shape: {', '.join(INPUT_FORMATS)}.", show_default=False),
]
AttrsKey = Annotated[
    str | None,
    typer.Option(help="Which exportReferencesGraph key of a structured-attrs file to read."),
]
StoreDir = Annotated[
    str | None,
    typer.Option(help=f"The logical store directory in the image. Default: {DEFAULT_STORE_DIR}."),
]
StoreRoot = Annotated[
    Path, typer.Option(help="Where the store directory is found on this machine.")
]
Roots = Annotated[
    list[str] | None,
    typer.Option("--root", help="A root of the image (repeatable). Default: unreferenced paths."),
]
MaxLayers = Annotated[int, typer.Option(help="The most layers the image may have.")]
StrategyOpt = Annotated[str, typer.Option(help=f"The layering strategy: {', '.join(STRATEGIES)}.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")]


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"nixlayer: {message}", file=sys.stderr)


def _plan(
    closure_file: Path,
    input_format: str | None,
    attrs_key: str | None,
    store_dir: str | None,
    store_root: Path,
    roots: list[str] | None,
    max_layers: int,
    strategy: str,
    quiet: bool,
) -> Plan:
    closure = read_closure(closure_file, input_format, attrs_key, store_dir)
    if not closure.has_nar_sizes:
        _note(f"{closure.source} has no narSize: reading the sizes from {store_root}", quiet)
        closure = with_disk_nar_sizes(closure, os.fsencode(store_root))
    return make_plan(closure, strategy, max_layers, roots or ())


@app.command("from-closure")
def from_closure(
    closure_file: ClosureArg,
    output: Annotated[
        str, typer.Option("--output", "-o", help="The image file; - for stdout.")
    ] = "image.tar",
    name: Annotated[
        str | None,
        typer.Option(
            help="NAME[:TAG]; the tag defaults to one derived from the content.", show_default=False
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture: amd64, arm64, arm/v7… or a Nix system like "
            "aarch64-linux. Default: this machine's."
        ),
    ] = None,
    created: Annotated[
        str | None,
        typer.Option(
            help="Creation time, RFC 3339 or 'now'. Default: from SOURCE_DATE_EPOCH, "
            "else 1970-01-01T00:00:01Z."
        ),
    ] = None,
    mtime: Annotated[
        int | None,
        typer.Option(
            help="File times in the layers, in seconds. Default: SOURCE_DATE_EPOCH, else 1.",
            min=0,
            max=MAX_TIMESTAMP,
        ),
    ] = None,
    input_format: InputFormat = None,
    attrs_key: AttrsKey = None,
    store_dir: StoreDir = None,
    store_root: StoreRoot = Path("/"),
    root: Roots = None,
    max_layers: MaxLayers = 100,
    strategy: StrategyOpt = "popularity",
    quiet: Quiet = False,
) -> None:
    """Build a docker-archive image from a closure and the store on disk."""
    plan = _plan(
        closure_file,
        input_format,
        attrs_key,
        store_dir,
        store_root,
        root,
        max_layers,
        strategy,
        quiet,
    )
    epoch = source_date_epoch(dict(os.environ))
    image_name, tag = parse_name(name) if name else (default_name(plan.roots), None)
    architecture, variant = parse_architecture(arch or host_architecture())
    settings = ImageSettings(
        name=image_name,
        tag=tag,
        architecture=architecture,
        variant=variant,
        created=parse_created(created) if created else timestamp(epoch or DEFAULT_MTIME),
        mtime=mtime if mtime is not None else (epoch or DEFAULT_MTIME),
    )
    with _progress(plan, quiet) as bar, atomic_output(output) as out:
        repo_tag = write_docker_archive(
            plan, os.fsencode(store_root), settings, out, bar.update, lambda: _count_layer(bar)
        )
    _note(f"wrote {repo_tag} to {output} ({len(plan.layers)} layers)", quiet)


def _progress(plan: Plan, quiet: bool) -> tqdm:
    """Bytes and layers on stderr, only when a person is watching."""
    bar = tqdm(
        total=sum(layer.nar_size for layer in plan.layers),
        unit="B",
        unit_scale=True,
        disable=quiet or not sys.stderr.isatty(),
    )
    bar.layers_done, bar.layers_total = 0, len(plan.layers)
    return bar


def _count_layer(bar: tqdm) -> None:
    bar.layers_done += 1
    bar.set_postfix_str(f"{bar.layers_done}/{bar.layers_total} layers")


@app.command("plan")
def plan_command(
    closure_file: ClosureArg,
    output: Annotated[
        str, typer.Option("--output", "-o", help="The plan JSON file; - for stdout.")
    ] = "-",
    input_format: InputFormat = None,
    attrs_key: AttrsKey = None,
    store_dir: StoreDir = None,
    store_root: StoreRoot = Path("/"),
    root: Roots = None,
    max_layers: MaxLayers = 100,
    strategy: StrategyOpt = "popularity",
    quiet: Quiet = False,
) -> None:
    """Assign store paths to layers and write the plan as JSON.

    Reads no store contents, unless the closure lacks NAR sizes.
    """
    plan = _plan(
        closure_file,
        input_format,
        attrs_key,
        store_dir,
        store_root,
        root,
        max_layers,
        strategy,
        quiet,
    )
    with atomic_output(output) as out:
        out.write(json.dumps(plan.to_json(), indent=2).encode() + b"\n")
    if not quiet:
        print(plan_table(plan), file=sys.stderr)


def _fail(message: str, code: int) -> NoReturn:
    print(f"nixlayer: error: {message}", file=sys.stderr)
    sys.exit(code)


def _terminate(signum: int, frame: object) -> NoReturn:
    """SIGTERM unwinds like Ctrl-C, so that temporary files are removed."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except UsageProblem as e:
        if not e.format_message():  # help was shown for a bare `nixlayer`
            sys.exit(2)
        _fail(e.format_message().replace("\n", " "), 2)
    except NixlayerError as e:
        _fail(str(e), 2)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:
        _fail(f"{e.filename or ''}: {e.strerror}" if e.filename else str(e), 2)
    sys.exit(code or 0)

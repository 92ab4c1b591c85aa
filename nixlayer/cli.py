"""The command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.exceptions import TyperException as UsageProblem

import nixlayer
from nixlayer import version
from nixlayer.closure import DEFAULT_STORE_DIR
from nixlayer.errors import NixlayerError, carried_by, one_line, reason, show_path
from nixlayer.formats import FORMATS
from nixlayer.image import WHOLE_NUMBER
from nixlayer.options import (
    DEFAULT_MAX_LAYERS,
    DEFAULT_STRATEGY,
    Layering,
    options_from_fields,
)
from nixlayer.readers import INPUT_FORMATS
from nixlayer.report import (
    fleet_notes,
    format_cost,
    format_description,
    format_report,
    plan_table,
    written_line,
)
from nixlayer.settings import DEFAULT_KEY, Settings, load_attrs_settings
from nixlayer.sizes import human_size, parse_size
from nixlayer.strategies import STRATEGIES

if TYPE_CHECKING:
    from tqdm import tqdm


app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Turn a Nix closure into a layered, reproducible container image.",
)

_DEBUG = {"traceback": False}


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"nixlayer {version()}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an internal error.")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print nixlayer's version.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    _DEBUG["traceback"] = debug
    if ctx.invoked_subcommand is None:  # a usage error, so the help goes to stderr
        print(ctx.get_help(), file=sys.stderr)
        raise typer.Exit(2)


class _GivenPath:
    """The parser of a path on the command line, into a ``str`` or a ``Path``. An empty
    one is refused: it names nothing, and as a ``Path`` it would be ``.``, the current
    folder (``-o ""`` wrote ./image.tar)."""

    def __init__(self, kind: type[str] | type[Path]) -> None:
        self.kind = kind
        self.__name__ = kind.__name__.lower()  # the help's <path> or <str>, as before

    def __call__(self, value: str) -> str | Path:
        if not value:
            raise typer.BadParameter("an empty path names no file or folder")
        return self.kind(value)


_PATH = _GivenPath(Path)
_TEXT_PATH = _GivenPath(str)
# More digits than any of nixlayer's numbers has (a tar's largest mtime has 11): beyond
# them a value is out of range whatever it is, and int() refuses over 4300 digits.
_MAX_DIGITS = 20


def _whole_number(value: str | int) -> int:
    """The parser of an integer option: ASCII digits only (``WHOLE_NUMBER``), as for
    SOURCE_DATE_EPOCH; ``--mtime 1_000`` or in other scripts' digits is refused, not
    read as a number no other tool would see there. (A default comes as an int.)"""
    if isinstance(value, int):
        return value
    if not WHOLE_NUMBER.fullmatch(value):
        raise typer.BadParameter(f"{show_path(value)} is not a whole number in ASCII digits")
    if len(value.lstrip("-")) > _MAX_DIGITS:
        raise typer.BadParameter(f"{show_path(value)} is out of range")
    return int(value)


ClosureArg = Annotated[
    str,
    typer.Argument(
        help="The closure: `nix path-info --json --recursive` output, a structured-attrs "
        "file or exportReferencesGraph text; - for stdin. Or, with nix on PATH, a store "
        "path, a ./result link or an installable (.#app): nix path-info reads its closure.",
        show_default=False,
        parser=_TEXT_PATH,
        metavar="CLOSURE",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
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
    Path, typer.Option(help="Where the store directory is found on this machine.", parser=_PATH)
]
Roots = Annotated[
    list[str] | None,
    typer.Option("--root", help="A root of the image (repeatable). Default: unreferenced paths."),
]
MaxLayers = Annotated[
    int,
    typer.Option(help="The most layers the image may have.", parser=_whole_number, metavar="<int>"),
]
StrategyOpt = Annotated[str, typer.Option(help=f"The layering strategy: {', '.join(STRATEGIES)}.")]
Previous = Annotated[
    str | None,
    typer.Option(
        help="The last build's plan JSON, image (PATH:REF for one of a layout) or closure: "
        "its layers are kept where they can be.",
        show_default=False,
        parser=_TEXT_PATH,
    ),
]
Groups = Annotated[
    Path | None,
    typer.Option(
        "--group",
        help='A JSON file of name globs that must share a layer, like [["python3-*"]].',
        show_default=False,
        parser=_PATH,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")]


def _argument(help_text: str, metavar: str) -> typer.models.ArgumentInfo:
    """A text argument that names a file, an image or ``PATH:REF``."""
    return typer.Argument(help=help_text, parser=_TEXT_PATH, metavar=metavar)


def _opt(
    help_text: str, *names: str, parser: Callable[[str], Any] | None = None
) -> typer.models.OptionInfo:
    metavar = "<int>" if parser is _whole_number else None
    return typer.Option(*names, help=help_text, show_default=False, parser=parser, metavar=metavar)


def _notes(messages: Iterable[str], quiet: bool) -> None:
    """Notes are printed once the command has done its work: a run that fails prints
    its error line alone."""
    if not quiet:
        for message in messages:
            print(f"nixlayer: {one_line(message)}", file=sys.stderr)


@app.command("from-closure")
def from_closure(
    ctx: typer.Context,
    closure_file: ClosureArg,
    output: Annotated[
        str | None,
        _opt(
            "The image: a file (- for stdout), or a folder for --format oci. "
            "Default: image.tar, or image for --format oci.",
            "--output",
            "-o",
            parser=_TEXT_PATH,
        ),
    ] = None,
    image_format: Annotated[
        str, typer.Option("--format", help=f"The image format: {', '.join(FORMATS)}.")
    ] = "docker-archive",
    no_clobber: Annotated[
        bool,
        typer.Option(
            "--no-clobber",
            help="Refuse to replace an existing file (for --format oci: a folder with an image).",
        ),
    ] = False,
    compress: Annotated[
        str | None,
        _opt("none, gzip or zstd. Default: gzip layers for OCI, none for docker-archive."),
    ] = None,
    compress_level: Annotated[
        int | None,
        _opt("The compression level: gzip 1 to 9, zstd 1 to 19.", parser=_whole_number),
    ] = None,
    cache_dir: Annotated[
        Path | None, _opt("The layer cache. Default: $XDG_CACHE_HOME/nixlayer.", parser=_PATH)
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not use the layer cache.")
    ] = False,
    name: Annotated[str | None, _opt("NAME[:TAG]. Default: the root's name.")] = None,
    tag: Annotated[str | None, _opt("The tag. Default: derived from the content.")] = None,
    arch: Annotated[
        str | None,
        _opt("amd64, arm64, arm/v7… or a Nix system like aarch64-linux. Default: this machine's."),
    ] = None,
    created: Annotated[
        str | None,
        _opt("Creation time, RFC 3339 or 'now'. Default: SOURCE_DATE_EPOCH, else 1970-01-01."),
    ] = None,
    mtime: Annotated[
        int | None,
        _opt(
            "File times in the layers, in seconds since 1970. Default: SOURCE_DATE_EPOCH, else 1.",
            parser=_whole_number,
        ),
    ] = None,
    cmd: Annotated[str | None, _opt("Cmd: a JSON array, or one plain argument.")] = None,
    entrypoint: Annotated[str | None, _opt("Entrypoint: a JSON array, or one argument.")] = None,
    env: Annotated[list[str] | None, _opt("KEY=VALUE (repeatable).")] = None,
    expose: Annotated[list[str] | None, _opt("PORT[/tcp|udp] (repeatable).")] = None,
    workdir: Annotated[str | None, _opt("The working directory.")] = None,
    volume: Annotated[list[str] | None, _opt("A volume path (repeatable).")] = None,
    user: Annotated[str | None, _opt("USER[:GROUP] or UID[:GID] to run as.")] = None,
    label: Annotated[list[str] | None, _opt("KEY=VALUE (repeatable).")] = None,
    stop_signal: Annotated[str | None, _opt("The signal that stops the container.")] = None,
    config: Annotated[
        Path | None,
        _opt("A JSON file with an OCI image config's `config` object.", parser=_PATH),
    ] = None,
    contents: Annotated[
        list[str] | None, _opt("A store path to link into the image root (repeatable).")
    ] = None,
    link_paths: Annotated[
        str | None, _opt("Link only these paths of --contents, e.g. /bin,/etc.")
    ] = None,
    add: Annotated[
        list[str] | None, _opt("SRC:DEST[:MODE]: copy a host file or folder (repeatable).")
    ] = None,
    mkdir: Annotated[list[str] | None, _opt("DEST[:MODE[:UID:GID]] (repeatable).")] = None,
    symlink: Annotated[list[str] | None, _opt("DEST:TARGET (repeatable).")] = None,
    from_image: Annotated[
        str | None,
        _opt(
            "A base image to build on: a docker-archive, OCI layout or oci-archive "
            "(PATH:REF for one image of several).",
            "--from",
            parser=_TEXT_PATH,
        ),
    ] = None,
    input_format: InputFormat = None,
    attrs_key: AttrsKey = None,
    store_dir: StoreDir = None,
    store_root: StoreRoot = Path("/"),
    root: Roots = None,
    max_layers: MaxLayers = DEFAULT_MAX_LAYERS,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
    previous: Previous = None,
    group: Groups = None,
    quiet: Quiet = False,
    settings_from_attrs: Annotated[
        bool,
        typer.Option(
            "--settings-from-attrs",
            help="Take the image settings from the closure's structured-attrs file too.",
        ),
    ] = False,
    settings_key: Annotated[
        str, typer.Option(help="The attribute that holds those settings.")
    ] = DEFAULT_KEY,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print what was written as JSON: the digests, name, tag and each layer's "
            "digest, size and store paths.",
        ),
    ] = False,
) -> None:
    """Build an image from a closure and the store on disk."""
    if as_json and _is_stdout(output):
        raise NixlayerError(f"--json: -o {output} is standard output, which takes the image")
    given = _given_fields(ctx)
    named = _flag_of
    if settings_from_attrs:
        if closure_file == "-":
            raise NixlayerError(
                "--settings-from-attrs: reads the closure's file a second time, so the "
                "closure cannot come from stdin (-); give the .attrs.json file's path"
            )
        with _worded(named):
            settings = load_attrs_settings(Path(closure_file), settings_key)
        given = {**settings.values, **given}
        named = _named_by(settings)
    with _worded(named):
        source, options = options_from_fields(given)
        notes: list[str] = []
        with _Progress(quiet) as progress:
            built = nixlayer.build_image(source, options, progress, notes.append)
    _notes([*notes, *built.plan.notes, written_line(built.image)], quiet)
    if as_json:
        print(json.dumps(built.image.to_json(), indent=2))


def _is_stdout(output: str | None) -> bool:
    """Whether ``-o`` is this process's standard output, by name or by what it is."""
    if output == "-":
        return True
    try:
        return output is not None and os.path.samestat(os.stat(output), os.fstat(1))
    except OSError:
        return False


# The typer parameters of from-closure whose API option field has another name; the
# flags that turn an option off (--no-cache) give the field the opposite value.
_FIELDS = {
    "closure_file": "closure",
    "output": "path",
    "compress": "compression",
    "config": "config_file",
    "from_image": "base",
    "root": "roots",
    "group": "groups",
    "volume": "volumes",
    "label": "labels",
    "add": "adds",
    "mkdir": "directories",
    "symlink": "symlinks",
}
_NEGATED = {"no_cache": "use_cache", "no_clobber": "clobber"}
_NOT_OPTIONS = ("quiet", "settings_from_attrs", "settings_key", "as_json")


def _given_fields(ctx: typer.Context) -> dict[str, Any]:
    """The options given on the command line, by API field name: a default is left to
    the API (and to the settings file). The values as typer converted them (ctx.params
    holds click's raw strings before typer 0.29)."""
    given: dict[str, Any] = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in _NOT_OPTIONS or source is None or source.name != "COMMANDLINE":
            continue
        if name in _NEGATED:
            given[_NEGATED[name]] = not value
        else:
            given[_FIELDS.get(name, name)] = value
    return given


def _named_by(settings: Settings) -> Callable[[str], str]:
    """How an error names an option: by its flag, or where the settings file gave it."""

    def name(option: str) -> str:
        return settings.name_of(option) if option in settings.values else _flag_of(option)

    return name


@contextlib.contextmanager
def _worded(name_of: Callable[[str], str]) -> Iterator[None]:
    """Errors about an option's value name it as ``name_of`` does."""
    try:
        yield
    except NixlayerError as error:
        if error.option is None:
            raise
        raise NixlayerError(error.worded(name_of)) from None


class _Progress:
    """Bytes and layers on stderr, only when a person is watching. tqdm is not even
    created otherwise: it makes a lock in /dev/shm, where a Nix build must not write;
    nor imported, which would cost every scripted run its startup time."""

    def __init__(self, quiet: bool) -> None:
        self.bar: tqdm | None = None
        self.quiet = quiet
        self.layers = 0

    def start(self, total: int) -> None:
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def sized(self, hint: int, size: int) -> None:
        """The total is the layers' size hints: a layer about to be written puts its
        true size in place of its hint, one in place already moves the bar by its hint."""
        if self.bar is not None:
            if size:
                self.bar.total += size - hint
            else:
                self.bar.update(hint)

    def layer_done(self) -> None:
        self.layers += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.layers} layers")

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.bar is not None:
            self.bar.leave = kind is None  # a failed run leaves its error line alone
            self.bar.close()


@app.command("plan")
def plan_command(
    ctx: typer.Context,
    closure_files: Annotated[
        list[str],
        typer.Argument(
            help="The closure (with --fleet: several), as from-closure reads it; - for stdin.",
            show_default=False,
            parser=_TEXT_PATH,
            metavar="CLOSURE...",
        ),
    ],
    output: Annotated[
        str,
        _opt(
            "The plan JSON file (- for stdout); with --fleet, a folder.",
            "--output",
            "-o",
            parser=_TEXT_PATH,
        ),
    ] = "-",
    fleet: Annotated[
        bool, typer.Option("--fleet", help="Plan several images so that they share layers.")
    ] = False,
    input_format: InputFormat = None,
    attrs_key: AttrsKey = None,
    store_dir: StoreDir = None,
    store_root: StoreRoot = Path("/"),
    root: Roots = None,
    max_layers: MaxLayers = DEFAULT_MAX_LAYERS,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
    previous: Previous = None,
    group: Groups = None,
    from_image: Annotated[
        str | None,
        _opt(
            "A base image nixlayer wrote (PATH:REF for one of several): the paths it "
            "holds get no layer.",
            "--from",
            parser=_TEXT_PATH,
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Assign store paths to layers and write the plan as JSON.

    Reads no store contents, unless the closure lacks NAR sizes. --max-layers is the
    budget of store layers alone here.
    """
    if fleet:
        one_image = {"--root": root, "--previous": previous, "--group": group, "--from": from_image}
        given = [flag for flag, value in one_image.items() if value]
        if given:
            raise NixlayerError(f"{given[0]}: not with --fleet (it is for one image)")
    elif len(closure_files) != 1:
        raise NixlayerError("plan: give one closure, or several with --fleet")
    notes: list[str] = []
    with _worded(_flag_of):
        source, options = options_from_fields({**_given_fields(ctx), "closure": closure_files[0]})
        if fleet:
            files = nixlayer.fleet_plan_files(closure_files, output)
            sources = [replace(source, closure=file) for file in closure_files]
            planned = nixlayer.plan_fleet(sources, options.layering, notes.append)
            nixlayer.save_plans(dict(zip(files, planned.plans, strict=True)))
            _notes([*notes, *fleet_notes(closure_files, planned)], quiet)
            return
        plan = nixlayer.plan_image(source, options.layering, options.base, notes.append)
        nixlayer.save_plans({output: plan})
    _notes(notes, quiet)
    if not quiet:
        print(plan_table(plan), file=sys.stderr)


@app.command("diff")
def diff_command(
    old: Annotated[
        str,
        _argument(
            "The last build: a plan JSON, closure or image (PATH:REF for one of several).", "OLD"
        ),
    ],
    new: Annotated[
        str,
        _argument(
            "The new build: a plan JSON, closure or image (PATH:REF for one of several).", "NEW"
        ),
    ],
    as_json: AsJson = False,
    fail_over: Annotated[
        str | None,
        _opt(
            "Exit 1 when more would be pushed: bytes, or a size like 10M or 1.5 GiB "
            "(K, M, G, KiB…: units of 1024, as the table prints them)."
        ),
    ] = None,
    store_root: StoreRoot = Path("/"),
    max_layers: MaxLayers = DEFAULT_MAX_LAYERS,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
) -> None:
    """What changes between two builds' layers, and what pushing the new one costs.

    Closures are planned here with --strategy and --max-layers.
    """
    with _worded(_flag_of):
        with carried_by("fail_over"):
            limit = parse_size(fail_over) if fail_over is not None else None
        layering = Layering(strategy=strategy, max_layers=max_layers)
        cost = nixlayer.diff_builds(old, new, layering, store_root)
    print(json.dumps(cost.to_json(), indent=2) if as_json else format_cost(cost))
    if limit is not None and cost.pushed > limit:
        pushed = f"{human_size(cost.pushed)} ({cost.pushed} bytes)"
        _fail(f"--fail-over {fail_over}: the push would be {pushed}", 1)


@app.command("inspect")
def inspect_command(
    image: Annotated[
        str,
        _argument(
            "A docker-archive, OCI layout or oci-archive; PATH:REF for one image of several.",
            "IMAGE",
        ),
    ],
    as_json: AsJson = False,
) -> None:
    """Show an image's config and, per layer, its digest, size and store paths."""
    with _worded(_flag_of):
        description = nixlayer.describe_image(image)
    if as_json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))


@app.command("verify")
def verify_command(
    image: Annotated[
        str, _argument("A docker-archive, OCI layout or oci-archive: every image in it.", "IMAGE")
    ],
    as_json: AsJson = False,
) -> None:
    """Re-read an image as consumers would: every digest, size and diff_id, every layer
    member and config field, and the layers merged; exit 1 on a problem."""
    report = nixlayer.verify_image(image)
    print(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    if not report.ok:
        sys.exit(1)


# The API's option fields whose flag is not ``--`` and the field's name with dashes.
_FLAGS = {
    "base": "--from",
    "image_format": "--format",
    "output": "-o",
    "compression": "--compress",
    "roots": "--root",
    "groups": "--group",
    "volumes": "--volume",
    "labels": "--label",
    "adds": "--add",
    "directories": "--mkdir",
    "symlinks": "--symlink",
    "config_file": "--config",
    "old": "OLD",
    "new": "NEW",
    "image": "IMAGE",
    "closure": "CLOSURE",
}


def _flag_of(option: str) -> str:
    """The command line's name for an API option, for error messages."""
    return _FLAGS.get(option) or "--" + option.replace("_", "-")


def _fail(message: str, code: int) -> NoReturn:
    print(f"nixlayer: error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def _terminate(signum: int, frame: object) -> NoReturn:
    """SIGTERM unwinds like Ctrl-C, so that temporary files are removed."""
    raise KeyboardInterrupt


class _ClosedStream:
    """What stands for a standard stream that was closed when nixlayer started: using it
    is an error. (Python puts None there, and ``print(file=None)`` writes to stdout.)"""

    closed = True  # so that Python does not flush it on the way out

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> NoReturn:
        raise NixlayerError(f"{self.name} is closed")


def _guard_standard_streams() -> None:
    """Keep descriptors 0, 1 and 2 taken, by /dev/null where one was closed (``<&-``,
    ``>&-``, ``2>&-``), so that no file opened later gets the number and becomes a
    stream for nixlayer or the programs it runs. A closed stdin or stdout is an error
    where it is used; a closed stderr takes the notes and errors it was closed for."""
    streams = (("stdin", "standard input"), ("stdout", "standard output"), ("stderr", ""))
    for fd, (attribute, name) in enumerate(streams):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            # stderr writes to /dev/null, as asked; stdin and stdout fail where used
            stream = open(fd, "w", closefd=False) if fd == 2 else _ClosedStream(name)  # noqa: SIM115
            setattr(sys, attribute, stream)


def main() -> None:
    _guard_standard_streams()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except UsageProblem as e:
        _fail(e.format_message().replace("\n", " "), 2)
    except NixlayerError as e:
        _fail(e.worded(_flag_of), 2)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:  # where no caller could name the file better
        _fail(f"{show_path(e.filename)}: {reason(e)}" if e.filename else reason(e), 2)
    except Exception as e:  # a bug in nixlayer, not a problem with the input
        if _DEBUG["traceback"]:
            raise
        _fail(
            f"internal error ({type(e).__name__}: {e}); please report it with the output "
            "of the same command run with `nixlayer --debug …`",
            1,
        )
    if code == 130:  # typer turns Ctrl-C and SIGTERM into exit code 130
        _fail("interrupted", 130)
    sys.exit(code or 0)

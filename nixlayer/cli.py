"""The command line: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.exceptions import TyperException as UsageProblem

from nixlayer import version
from nixlayer.build import (
    ClosureInput,
    Identity,
    LastBuild,
    image_run_config,
    image_settings,
    last_plan,
    load_closure,
    load_groups,
    load_layering,
    plan_image,
    read_base,
)
from nixlayer.cache import LayerCache, default_cache_dir
from nixlayer.closure import DEFAULT_STORE_DIR, Closure
from nixlayer.compression import parse_compression
from nixlayer.customisation import (
    Customisation,
    parse_add,
    parse_link_paths,
    parse_mkdir,
    parse_symlink,
)
from nixlayer.errors import NixlayerError, carried_by, one_line, reason, show_path
from nixlayer.fleet import plan_fleet
from nixlayer.formats import (
    DEFAULT_COMPRESSION,
    FORMATS,
    Writing,
    default_output,
    format_named,
    read_image,
    write_image,
)
from nixlayer.image import WHOLE_NUMBER, ImageSpec, image_store_paths
from nixlayer.inspect import describe_image
from nixlayer.measure import push_cost
from nixlayer.output import atomic_output
from nixlayer.plan import make_plan
from nixlayer.readers import INPUT_FORMATS
from nixlayer.report import (
    format_cost,
    format_description,
    format_report,
    human_size,
    parse_size,
    plan_table,
    written_line,
)
from nixlayer.runconfig import RunFlags
from nixlayer.settings import DEFAULT_KEY, load_attrs_settings
from nixlayer.strategies import DEFAULT_STRATEGY, STRATEGIES

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
    Path,
    typer.Argument(
        help="The closure: `nix path-info --json --recursive` output, a structured-attrs "
        "file or exportReferencesGraph text; - for stdin.",
        show_default=False,
        parser=_PATH,
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
    max_layers: MaxLayers = 100,
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
) -> None:
    """Build an image from a closure and the store on disk."""
    # The arguments as typer converted them (ctx.params holds click's raw strings before
    # typer 0.29); first, while the only locals are the arguments.
    given = {name: value for name, value in locals().items() if name != "ctx"}
    o = SimpleNamespace(**given, inline_config=None)
    o.__dict__.update(_with_attrs_settings(ctx, given))
    source = ClosureInput(o.closure_file, o.input_format, o.attrs_key, o.store_dir, o.store_root)
    notes: list[str] = []
    closure = load_closure(source, notes.append)
    with carried_by("base"):
        base = None if o.from_image is None else read_base(o.from_image)
    customisation = Customisation(
        contents=tuple(o.contents or ()),
        link_paths=("/",) if o.link_paths is None else parse_link_paths(o.link_paths),
        adds=tuple(map(parse_add, o.add or ())),
        directories=tuple(map(parse_mkdir, o.mkdir or ())),
        symlinks=tuple(map(parse_symlink, o.symlink or ())),
    )
    flags = RunFlags(o.cmd, o.entrypoint, o.env or (), o.expose or (), o.workdir,
                     o.volume or (), o.user, o.label or (), o.stop_signal)  # fmt: skip
    run = image_run_config(base, o.config, o.inline_config, flags)
    last_build = None if o.previous is None else LastBuild(o.previous, source)
    plan, layers = plan_image(
        closure, o.store_root, customisation, base, o.strategy, o.max_layers, o.root or (),
        last_build, load_groups(None if o.group is None else Path(o.group)),
    )  # fmt: skip
    notes.extend(plan.notes)
    identity = Identity(o.name, o.tag, o.arch, o.created, o.mtime)
    spec = ImageSpec(image_settings(identity, plan.roots, base, os.environ), run, layers, base)
    compression = parse_compression(
        DEFAULT_COMPRESSION.get(o.image_format, "none") if o.compress is None else o.compress,
        o.compress_level,
    )
    cache = LayerCache(None if o.no_cache else o.cache_dir or default_cache_dir(dict(os.environ)))
    with carried_by("image_format"):
        chosen = format_named(o.image_format)
    total = sum(layer.size_hint for layer in spec.all_layers)
    with _Progress(total, o.quiet) as progress, carried_by("output"):
        written = write_image(
            spec,
            chosen,
            o.output or default_output(o.image_format),
            Writing(compression, cache, not o.no_clobber,
                    progress.update, progress.layer_done, progress.sized),
        )  # fmt: skip
    _notes([*notes, written_line(written)], o.quiet)


def _with_attrs_settings(ctx: typer.Context, options: dict[str, Any]) -> dict[str, Any]:
    """With --settings-from-attrs, the file's settings for options not given here."""
    if not options["settings_from_attrs"]:
        return {}
    settings = load_attrs_settings(options["closure_file"], options["settings_key"])
    return {
        name: value
        for name, value in settings.items()
        if name == "inline_config" or _source(ctx, name) != "COMMANDLINE"
    }


def _source(ctx: typer.Context, name: str) -> str | None:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


class _Progress:
    """Bytes and layers on stderr, only when a person is watching. tqdm is not even
    created otherwise: it makes a lock in /dev/shm, where a Nix build must not write;
    nor imported, which would cost every scripted run its startup time."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar: tqdm | None = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True)
        self.layers = 0

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
    closure_files: Annotated[
        list[Path],
        typer.Argument(
            help="The closure (with --fleet: several); - for stdin.",
            show_default=False,
            parser=_PATH,
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
    max_layers: MaxLayers = 100,
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
        names = _fleet_plan_names(closure_files, Path(output))
    elif len(closure_files) != 1:
        raise NixlayerError("plan: give one closure, or several with --fleet")
    sources = [
        ClosureInput(f, input_format, attrs_key, store_dir, store_root) for f in closure_files
    ]
    notes: list[str] = []
    closures = [load_closure(source, notes.append) for source in sources]
    if fleet:
        notes.extend(_plan_fleet(closures, closure_files, names, strategy, max_layers))
        _notes(notes, quiet)
        return
    with carried_by("base"):
        provided = image_store_paths(read_base(from_image)) if from_image else frozenset()
    last_build = LastBuild(previous, sources[0]) if previous else None
    before = last_plan(last_build, strategy, max_layers, provided)
    plan = make_plan(
        closures[0], strategy, max_layers, root or (), before, load_groups(group), provided
    )
    with carried_by("output"), atomic_output(output) as out:
        out.write(json.dumps(plan.to_json(), indent=2).encode() + b"\n")
    _notes(notes, quiet)
    if not quiet:
        print(plan_table(plan), file=sys.stderr)


def _fleet_plan_names(files: list[Path], folder: Path) -> list[Path]:
    """Where each closure's plan goes: ``<stem>.plan.json`` in ``folder``, or, where
    stems repeat (a.json and b/a.json), named after their folders too."""
    if not folder.is_dir():
        raise NixlayerError(
            f"-o {show_path(folder)}: --fleet writes one plan per closure into a folder"
        )
    stems = [file.stem for file in files]
    if len(set(stems)) < len(stems):
        stems = ["-".join(file.with_suffix("").parts[-2:]) for file in files]
    for file, stem in zip(files, stems, strict=True):
        if stems.count(stem) > 1:
            raise NixlayerError(
                f"{show_path(file)}: another closure's plan would also be "
                f"{show_path(stem)}.plan.json"
            )
    return [folder / f"{stem}.plan.json" for stem in stems]


def _plan_fleet(
    closures: list[Closure], files: list[Path], names: list[Path], strategy: str,
    max_layers: int,
) -> list[str]:  # fmt: skip
    """Writes the plans; returns the notes that say what they hold."""
    fleet = plan_fleet(closures, strategy, max_layers)
    notes = []
    with carried_by("output"), contextlib.ExitStack() as outputs:  # all or none: planned together
        for name, plan in zip(names, fleet.plans, strict=True):
            out = outputs.enter_context(atomic_output(str(name)))
            out.write(json.dumps(plan.to_json(), indent=2).encode() + b"\n")
            out.flush()  # a full disk fails here, before any plan takes its name
    for file, plan in zip(files, fleet.plans, strict=True):
        notes.append(f"{show_path(file)}: {len(plan.layers)} layers")
    share = 100 * fleet.shared_bytes / fleet.ceiling if fleet.ceiling else 100.0
    notes.append(
        f"shared layers hold {human_size(fleet.shared_bytes)} of the "
        f"{human_size(fleet.ceiling)} of paths in more than one image ({share:.1f} %)"
    )
    return notes


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
    max_layers: MaxLayers = 100,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
) -> None:
    """What changes between two builds' layers, and what pushing the new one costs.

    Closures are planned here with --strategy and --max-layers.
    """
    limit = parse_size(fail_over, "--fail-over") if fail_over is not None else None
    source = ClosureInput(Path(old), store_root=store_root)
    before = load_layering(old, "old", source, strategy, max_layers)
    after = load_layering(new, "new", source, strategy, max_layers)
    cost = push_cost(before.layer_sets(), after.layer_sets(), after.sizes())
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
    with carried_by("image"):
        description = describe_image(read_image(image))
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
    from nixlayer.verify import verify_image  # only this command needs it

    report = verify_image(image)
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

"""The image's identity and config: name, tag, platform, creation time, and the
config JSON that ties the layers' diff_ids together.

Everything here is a pure function of its arguments, so that the same plan and
settings give the same config bytes on any machine.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from nixlayer.errors import NixlayerError
from nixlayer.jsonfile import json_strings
from nixlayer.layers import BlobLayer, Layer, layer_store_paths, written_by_nixlayer

DEFAULT_MTIME = 1
MAX_TIMESTAMP = 0o77777777777  # what a tar header's mtime field holds

# Docker/OCI architecture names, and what Nix systems and `uname -m` call them.
_ARCHITECTURES = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", None),
    "386": ("386", None),
    "arm": ("arm", None),
    "arm/v6": ("arm", "v6"),
    "arm/v7": ("arm", "v7"),
    "ppc64le": ("ppc64le", None),
    "riscv64": ("riscv64", None),
    "s390x": ("s390x", None),
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", None),
    "i686": ("386", None),
    "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "powerpc64le": ("ppc64le", None),
}

_NAME = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"  # an optional registry host and port
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# RFC 3339's date-time (its ABNF is case-insensitive; section 5.6 allows a space for
# the T), in ASCII digits; fractions of a second are dropped.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# An integer in ASCII digits, as `date +%s` prints it and C's strtol reads it: Python's
# int() also takes "1_000", " 5" and other scripts' digits, which no other tool does.
WHOLE_NUMBER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class ImageSettings:
    """What the user chose about the image beyond its layers.

    ``tag`` None means: derived from the image's content, so that it changes
    exactly when the image does.
    """

    name: str
    tag: str | None
    architecture: str
    variant: str | None
    created: str
    mtime: int


@dataclass(frozen=True)
class SourceImage:
    """An image read back from disk: a base for ``--from``, or one to inspect.

    ``config_digest`` is the sha256 of its config as stored (the image ID that ``docker
    images`` shows); ``manifest_digest`` that of its OCI manifest as stored (what a
    registry names it by), None where the format has none (a docker-archive)."""

    source: str
    config: dict[str, Any]
    layers: tuple[BlobLayer, ...]
    config_digest: str
    manifest_digest: str | None
    repo_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class WrittenLayer:
    """One layer as written, bottom first: ``digest`` and ``size`` are its blob's (the
    compressed bytes where it is compressed), ``diff_id`` its tar's; ``store_paths``
    what it holds of the store (none for the customisation layer or a base's);
    ``reused`` whether its blob was in place (a layout's) or in the layer cache."""

    digest: str
    diff_id: str
    size: int
    media_type: str
    store_paths: tuple[str, ...]
    reused: bool = False


@dataclass(frozen=True)
class WrittenImage:
    """What a format wrote, as data for scripts and the API; never a sentence.

    ``manifest_digest`` is the OCI manifest's (what a registry names the image by);
    a docker-archive has no manifest of its own, so it is None there. ``config_digest``
    is the image ID that ``docker images`` shows."""

    image_format: str
    destination: str
    name: str
    tag: str
    manifest_digest: str | None
    config_digest: str
    layers: tuple[WrittenLayer, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    def to_json(self) -> dict[str, Any]:
        """What ``from-closure --json`` prints: the fields, the layers bottom first."""
        return {
            "format": self.image_format,
            "destination": self.destination,
            "name": self.name,
            "tag": self.tag,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "layers": [
                {
                    "digest": layer.digest,
                    "diff_id": layer.diff_id,
                    "size": layer.size,
                    "media_type": layer.media_type,
                    "store_paths": list(layer.store_paths),
                    "reused": layer.reused,
                }
                for layer in self.layers
            ],
        }


@dataclass(frozen=True)
class ImageSpec:
    """Everything an image format needs to write an image, bottom layer first.

    ``layers`` are nixlayer's own; a base image's layers go below them.
    """

    settings: ImageSettings
    run_config: dict[str, Any]
    layers: tuple[Layer, ...]
    base: SourceImage | None = None

    @property
    def all_layers(self) -> tuple[Layer, ...]:
        return (*(self.base.layers if self.base else ()), *self.layers)


def parse_architecture(value: str) -> tuple[str, str | None]:
    """A Docker architecture (``arm/v7``), a Nix system (``aarch64-linux``) or a
    ``uname -m`` name, as the config's ``architecture`` and ``variant``."""
    key = value.removesuffix("-linux")
    if key not in _ARCHITECTURES:
        raise NixlayerError(f"{value}: unknown architecture")
    return _ARCHITECTURES[key]


def host_architecture() -> str:
    return platform.machine()


def parse_name(value: str) -> tuple[str, str | None]:
    """``NAME[:TAG]``; a colon before the last slash belongs to a registry's port."""
    if "@" in value:
        raise NixlayerError(f"{value}: an image's digest follows from its content; give NAME[:TAG]")
    name, tag = value, None
    if value.rfind(":") > value.rfind("/"):
        name, tag = value.rsplit(":", 1)
    if not _NAME.fullmatch(name):
        raise NixlayerError(
            f"{value}: not a valid image name (lowercase, like app or "
            "registry.example:5000/team/app)"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        raise NixlayerError(f"{value}: {tag!r} is not a valid tag")
    return name, tag


def qualified_name(reference: str) -> str:
    """A reference as docker and containerd spell it in full: ``app:v1`` is
    ``docker.io/library/app:v1``; a name that starts with a registry stays as it is."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return reference
    return f"docker.io/{reference}" if slash else f"docker.io/library/{reference}"


def parse_tag(value: str) -> str:
    if not _TAG.fullmatch(value):
        raise NixlayerError(f"{value}: not a valid tag (letters, digits, _ . -)")
    return value


def default_name(roots: Sequence[str]) -> str:
    """The single root's ``name-version`` made into a valid image name, else ``image``."""
    if len(roots) != 1:
        return "image"
    candidate = re.sub(r"[^a-z0-9._-]+", "-", roots[0].rsplit("/", 1)[1][33:].lower())
    candidate = candidate.strip("._-")
    return candidate if _NAME.fullmatch(candidate) else "image"


def timestamp(moment: int | datetime) -> str:
    """RFC 3339 in UTC, to the second, as image configs carry it: the year always has
    four digits (``strftime("%Y")`` writes year 1 as ``1``, which no parser reads)."""
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    return utc.isoformat() + "Z"


def canonical_json(value: Any) -> bytes:
    """One byte sequence per value: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def config_json(spec: ImageSpec, diff_ids: Sequence[str]) -> bytes:
    """The image config: platform, creation time, run config, diff_ids, and a history
    entry a layer, whose comment lists its store paths so tools can read the plan back.

    A base image's history is kept as it was, with ours after it, and an empty entry
    for each base layer it has none for: entries pair with layers in order, so ours
    would otherwise describe the base's layers (and a base layer another tool wrote
    would pass for nixlayer's, listing our store paths).
    """
    settings = spec.settings
    base_history: list[Any] = []
    if spec.base is not None:
        history = spec.base.config.get("history")
        missing = len(spec.base.layers) - len(_owned_history(spec.base.config))
        base_history = [*(history if isinstance(history, list) else []), *[{}] * missing]
    config: dict[str, Any] = {
        "architecture": settings.architecture,
        "os": "linux",
        "created": settings.created,
        "config": spec.run_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [
            *base_history,
            *({"created": settings.created, **layer.history} for layer in spec.layers),
        ],
    }
    if settings.variant:
        config["variant"] = settings.variant
    return canonical_json(config)


# The fields of an image config that the OCI image spec types, other than ``config``
# (``runconfig.check_run_config``) and ``rootfs`` (read with the layers): consumers
# decode them into typed fields, and refuse a config where one has another type.
# null is a field not set, for them as for nixlayer.
_CONFIG_STRINGS = ("created", "author", "architecture", "os", "os.version", "variant")
_HISTORY_STRINGS = ("created", "author", "created_by", "comment")


def config_problems(config: dict[str, Any]) -> list[str]:
    """The typed fields of an image config that have another type, and the required
    ones (the platform) that are missing, each as a phrase like ``architecture is not a
    string``."""
    required = ("architecture", "os")
    problems = [f"{key} is missing" for key in required if config.get(key) in (None, "")]
    problems += [f"{key} is not a string" for key in _CONFIG_STRINGS if not _string(config, key)]
    features = config.get("os.features")
    if features is not None and not json_strings(features):
        problems.append("os.features is not a list of strings")
    history = config.get("history")
    if history is not None and not isinstance(history, list):
        problems.append("history is not a list")
    for number, entry in enumerate(history if isinstance(history, list) else (), 1):
        if not isinstance(entry, dict):
            problems.append(f"history entry {number} is not an object")
            continue
        problems += [
            f"history entry {number}: {key} is not a string"
            for key in _HISTORY_STRINGS
            if not _string(entry, key)
        ]
        if not isinstance(entry.get("empty_layer"), (bool, type(None))):
            problems.append(f"history entry {number}: empty_layer is not true or false")
    return problems


def _string(fields: dict[str, Any], key: str) -> bool:
    """Whether ``key`` is a string, or not set."""
    return isinstance(fields.get(key), (str, type(None)))


def layer_histories(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The history entries that belong to layers, padded with empty entries where an
    image's history is shorter than its layers."""
    count = len(config.get("rootfs", {}).get("diff_ids") or ())
    return (_owned_history(config) + [{}] * count)[:count]


def _owned_history(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The history entries that belong to layers (not ``empty_layer`` ones); none where
    the history is not a list (it is optional)."""
    history = config.get("history")
    entries = history if isinstance(history, list) else []
    return [h for h in entries if isinstance(h, dict) and not h.get("empty_layer")]


def image_store_paths(image: SourceImage) -> frozenset[str]:
    """The store paths an image surely holds: those its nixlayer layers list, unless a
    layer another tool wrote sits above them (it may delete files: a whiteout) or the
    history does not pair up with the layers. Then none: nothing is left out."""
    ours = [written_by_nixlayer(layer.history) for layer in image.layers]
    lowest = ours.index(True) if True in ours else len(ours)
    if len(_owned_history(image.config)) != len(image.layers) or not all(ours[lowest:]):
        return frozenset()
    return frozenset(p for layer in image.layers for p in layer_store_paths(layer.history))


def content_tag(config: bytes) -> str:
    """A tag derived from the config, which names every layer's digest."""
    return hashlib.sha256(config).hexdigest()[:32]


def parse_created(value: str) -> str:
    """``--created``: RFC 3339 (normalised to UTC) or ``now``.

    Parsed here rather than by ``datetime.fromisoformat``, which takes other ISO 8601
    forms (week dates, no seconds, offsets with seconds) in one Python and not in
    another. The time must fall in years 0001 to 9999 both as written and in UTC,
    the years an RFC 3339 string and Python's datetime can hold.
    """
    if value == "now":
        return timestamp(datetime.now(timezone.utc))
    match = _RFC3339.fullmatch(value)
    if match is None:
        if _RFC3339.fullmatch(value + "Z"):
            raise NixlayerError(f"{value}: give a time zone, e.g. Z or +02:00")
        raise NixlayerError(f"{value}: not an RFC 3339 time (like 2024-05-01T12:00:00Z) or 'now'")
    *fields, sign, hours, minutes = match.groups()
    year, month, day, hour, minute, second = map(int, fields)
    out_of_range = NixlayerError(
        f"{value}: out of range: must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
    )
    if not year:
        raise out_of_range
    try:
        if sign and (int(hours) > 23 or int(minutes) > 59):
            raise ValueError("the offset must be from -23:59 to +23:59")
        offset = timedelta(hours=int(hours), minutes=int(minutes)) if sign else timedelta()
        zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as error:
        raise NixlayerError(f"{value}: not a valid time: {error}") from None
    try:
        return timestamp(moment)
    except OverflowError:
        raise out_of_range from None


def source_date_epoch(environ: dict[str, str]) -> int | None:
    """``SOURCE_DATE_EPOCH`` from the environment, the reproducible-builds convention:
    an integer in ASCII digits (Python's ``int`` also takes other scripts' digits, which
    the convention does not), and 0 is a time like any other."""
    value = environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not WHOLE_NUMBER.fullmatch(value):
        raise NixlayerError(
            f"SOURCE_DATE_EPOCH={value}: not a number of seconds since 1970 in ASCII "
            "digits, as `date +%s` prints it"
        )
    # (more digits than the largest would have: out of range, and too long for int())
    if len(value) > len(str(MAX_TIMESTAMP)) or not 0 <= int(value) <= MAX_TIMESTAMP:
        raise NixlayerError(f"SOURCE_DATE_EPOCH={value}: must be from 0 to {MAX_TIMESTAMP}")
    return int(value)

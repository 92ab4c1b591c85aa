"""What nixlayer prints for people: the tables of a plan, a push's cost, an image and
a verify report, and the notes a build ends with. Apart from the stages
that make them, so that printing a result never loads the graph library."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nixlayer.errors import one_line, show_path
from nixlayer.sizes import human_size

if TYPE_CHECKING:
    import os

    from nixlayer.fleet import FleetPlan
    from nixlayer.image import WrittenImage
    from nixlayer.measure import PushCost
    from nixlayer.plan import Plan
    from nixlayer.verify import VerifyReport


def plan_table(plan: Plan) -> str:
    """A short table for people: one row a layer, with its size and what it holds."""
    rows = [f"{'layer':>5}  {'size':>10}  {'paths':>5}  first path"]
    for index, layer in enumerate(plan.layers, 1):
        first = layer.paths[0].rsplit("/", 1)[1]
        rows.append(f"{index:>5}  {human_size(layer.nar_size):>10}  {len(layer.paths):>5}  {first}")
    total = sum(layer.nar_size for layer in plan.layers)
    rows.append(f"{len(plan.layers)} layers, {human_size(total)} of store paths ({plan.strategy})")
    rows.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(rows)


def _label(key: str) -> str:
    """A store path's base name; a layer without store paths is keyed by its diff_id,
    shortened as ``inspect`` shortens digests."""
    return key.rsplit("/", 1)[-1] if "/" in key else key[:19]


def format_cost(cost: PushCost, moved_shown: int = 20) -> str:
    """A table for people: one row a layer of the new build, then the totals."""
    rows = [f"{'layer':>5}  {'status':<8}  {'size':>10}  {'paths':>5}  what"]
    for change in cost.layers:
        first = _label(min(change.paths)) if change.paths else "-"
        what = first if len(change.paths) == 1 else f"{first} and {len(change.paths) - 1} more"
        if change.status == "changed":
            what += f" (+{len(change.came)} -{len(change.went)} paths)"
        rows.append(
            f"{change.index + 1:>5}  {change.status:<8}  {human_size(change.size):>10}  "
            f"{len(change.paths):>5}  {what}"
        )
    for path, old, new in cost.moved[:moved_shown]:
        rows.append(f"moved: {_label(path)} from layer {old + 1} to layer {new + 1}")
    if len(cost.moved) > moved_shown:
        rows.append(f"moved: … and {len(cost.moved) - moved_shown} more paths")
    ratio = f"{cost.ratio:.2f}x the floor" if cost.ratio is not None else "nothing new"
    rows.append(
        f"floor {human_size(cost.floor)}, pushed {human_size(cost.pushed)} ({ratio}), "
        f"excess {human_size(cost.excess)}, reuse {cost.reuse_percent:.1f} %, "
        f"chain {human_size(cost.chain)}"
    )
    return "\n".join(rows)


def format_description(description: dict[str, Any]) -> str:
    """A short text: the image, its run config, then one line a layer. What the image
    says of itself (tags, comments) is shown on one line, with no control character
    reaching the terminal."""
    platform = "/".join(_shown(p) for p in (description["os"], description["architecture"],
                                             description["variant"]) if p)  # fmt: skip
    tags = ", ".join(description["repo_tags"]) or "(no tag)"
    lines = [
        f"{description['source']}: {tags}, {platform}, created {_shown(description['created'])}",
        f"config: {json.dumps(description['config'], sort_keys=True)}",
        f"{'layer':>5}  {'size':>10}  {'digest':<19}  contents",
    ]
    for index, layer in enumerate(description["layers"], 1):
        paths = layer["store_paths"]
        what = (
            f"{len(paths)} store path{'s' if len(paths) > 1 else ''}: "
            + " ".join(p.rsplit("/", 1)[-1] for p in paths[:3])
            + (" …" if len(paths) > 3 else "")
            if paths
            else _shown(layer["comment"] or "-")
        )
        lines.append(f"{index:>5}  {human_size(layer['size']):>10}  {layer['digest'][:19]}  {what}")
    return "\n".join(map(one_line, lines))


def _shown(value: Any) -> str:
    """A field as the config has it: a string as it is, another type (which ``verify``
    reports) as JSON, never as Python would print it."""
    return value if isinstance(value, str) else json.dumps(value)


def written_line(image: WrittenImage) -> str:
    """The note a build ends with: what it wrote where, and how many layers; for a
    layout folder, which keeps blobs between builds, how many of them were there."""
    reused = sum(layer.reused for layer in image.layers)
    kept = f", {reused} reused" if image.image_format == "oci" else ""
    return f"wrote {image.ref} to {show_path(image.destination)} ({len(image.layers)} layers{kept})"


def format_report(report: VerifyReport) -> str:
    """A few lines for people: a summary line, then one line per problem and note."""
    kind = report.image_format + (f" ({report.compression})" if report.compression else "")
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    lines = [
        f"{show_path(report.source)}: {kind}, {report.images} image(s), "
        f"{report.layers} layer(s): {verdict}"
    ]
    lines += [f"  problem: {one_line(problem)}" for problem in report.problems]
    lines += [f"  note: {one_line(note)}" for note in report.notes]
    return "\n".join(lines)


def fleet_notes(closures: Sequence[str | os.PathLike[str]], fleet: FleetPlan) -> list[str]:
    """What a fleet's plans hold: each image's layers, and how much the shared layers share."""
    notes = [
        f"{show_path(closure)}: {len(plan.layers)} layers"
        for closure, plan in zip(closures, fleet.plans, strict=True)
    ]
    share = 100 * fleet.shared_bytes / fleet.ceiling if fleet.ceiling else 100.0
    notes.append(
        f"shared layers hold {human_size(fleet.shared_bytes)} of the "
        f"{human_size(fleet.ceiling)} of paths in more than one image ({share:.1f} %)"
    )
    return notes

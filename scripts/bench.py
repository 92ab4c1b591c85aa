#!/usr/bin/env python3
"""How fast nixlayer emits and plans images, each figure a ratio to a baseline measured
in the same run (tar | openssl, openssl alone, one compression worker, the first build,
the small-file case, nixpkgs' auto-layer.py), on inputs this script builds and removes
again.

    python scripts/bench.py                       # everything, about 10 minutes
    python scripts/bench.py --only large,small    # some benchmarks: large small oci
                                                  # rebuild planning memory fixed
    python scripts/bench.py --src /tmp/old        # another nixlayer tree (its nixlayer/)
    python scripts/bench.py --cold                # also with the page cache dropped
    python scripts/bench.py --only fixed --auto-layer /path/to/auto-layer.py
                    # nixlayer plan against nixpkgs' auto-layer.py (a copy of it, kept
                    # outside this tree), and the CLI's start

Inputs (a fake store of a few GB, synthetic closures) go to a temporary folder under
--tmp (default: the system's), removed at the end. Each timed run is preceded by a
read of its inputs, so that the page cache is warm (this machine evicts pages not read
for about 30 s); each figure is the best of --repeat runs. Progress goes to stderr,
the table to stdout. See scripts/BENCHMARKS.md for the figures and how to read them.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import hashlib
import itertools
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE = "/nix/store"
MB = 1_000_000
GB = 1_000_000_000
BENCHMARKS = ("large", "small", "oci", "rebuild", "planning", "memory", "fixed")
BLOCK = 1 << 20
GNU_TIME = "/usr/bin/time"  # measures a command's peak RSS (Debian: apt-get install time)


# ---------------------------------------------------------------- running things


@dataclass(frozen=True)
class Run:
    seconds: float
    maxrss_kb: int
    stdout: bytes = b""
    timed_out: bool = False
    returncode: int = 0


def run(
    command: Sequence[str],
    stdout: int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    memory_limit: int | None = None,
) -> Run:
    """Run a command; its wall time and its peak RSS. With ``memory_limit`` (bytes of
    address space), the child fails rather than makes the machine run out of memory.

    The peak RSS comes from GNU time, whose own child it is: a process forked from
    this one (which holds the generated inputs) would inherit its high-water mark,
    so ``wait4`` here would report this process's size, not the command's.
    """
    started = time.perf_counter()
    capture = stdout == subprocess.PIPE
    out_file = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 (closed below)
    rss_file = tempfile.NamedTemporaryFile(prefix="bench-rss-")  # noqa: SIM115
    if os.access(GNU_TIME, os.X_OK):
        command = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *command]

    def limit() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    process = subprocess.Popen(
        command,
        stdout=out_file if capture else stdout,
        env=env,
        start_new_session=True,
        preexec_fn=limit,
    )
    deadline = None if timeout is None else started + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG if deadline else 0)
        if pid:
            break
        if deadline and time.perf_counter() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(process.pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    output = b""
    if out_file is not None:
        out_file.seek(0)
        output = out_file.read()
        out_file.close()
    if process.returncode and not timed_out and check:
        raise SystemExit(f"bench: {' '.join(command)[:300]} failed ({process.returncode})")
    maxrss = usage.ru_maxrss
    with rss_file:
        rss_lines = Path(rss_file.name).read_text().split()
    if command[0] == GNU_TIME:
        maxrss = int(rss_lines[-1]) if rss_lines and rss_lines[-1].isdigit() else 0
    return Run(seconds, maxrss, output, timed_out, process.returncode)


def child(mode: str, *args: str) -> list[str]:
    """This script in a child process, to measure one thing in isolation."""
    return [sys.executable, str(Path(__file__).resolve()), f"--child-{mode}", *map(str, args)]


def nixlayer_cli(*args: object) -> list[str]:
    """The CLI of the tree under test: ``python -c`` puts the working folder first on
    ``sys.path``, which would import the nixlayer found there instead."""
    code = "import sys; del sys.path[0]; from nixlayer.cli import main; main()"
    return [sys.executable, "-c", code, *map(str, args)]


def sh(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the page cache


def files_under(root: Path) -> list[Path]:
    return sorted(
        Path(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if not os.path.islink(os.path.join(folder, name))
    )


def warm(files: Sequence[Path]) -> None:
    """Read every file, so that the timed run finds it in the page cache."""
    buffer = bytearray(BLOCK)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def evict(files: Sequence[Path]) -> None:
    """Drop the files' pages from the page cache (they are clean: synced after writing)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- a store on disk


def store_path(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return f"{STORE}/{''.join(NIX32[b % 32] for b in digest)}-{name}"


def on_disk(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def write_closure(root: Path, references: dict[str, list[str]], out: Path) -> None:
    """``nix path-info --json`` of the paths, with NAR sizes computed from the disk."""
    from nixlayer.store import nar_size, walk_store_path

    entries = [
        {
            "path": path,
            "narSize": nar_size(walk_store_path(os.fsencode(root), path)),
            "references": sorted(refs),
        }
        for path, refs in sorted(references.items())
    ]
    out.write_text(json.dumps(entries))


def fill(path: Path, size: int, block: bytes, offset: int) -> None:
    """``size`` bytes of ``block``, starting at ``offset`` and wrapping around."""
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(block)
    with open(path, "wb", buffering=0) as f:
        f.write(b"%d\n" % offset)  # files differ even where their blocks coincide
        left = size - len(b"%d\n" % offset)
        position = offset % len(block)
        while left > 0:
            piece = view[position : position + left]
            f.write(piece)
            left -= len(piece)
            position = 0


def compressible_block(size: int, seed: int) -> bytes:
    """Text-like bytes that gzip -6 shrinks about 2.6 times, zstd -3 about 3.2 times."""
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJ0123456789"
    vocabulary = [bytes(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(4000)]
    weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocabulary))))
    parts: list[bytes] = []
    length = 0
    while length < size:
        line = b" ".join(rng.choices(vocabulary, cum_weights=weights, k=64))
        parts += (line, rng.randbytes(rng.randint(0, 48)))
        length += len(line) + 48
    return b"\n".join(parts)[:size]


@dataclass
class Store:
    root: Path
    closure: Path
    references: dict[str, list[str]]
    files: list[Path]
    entries: int  # files, directories and symlinks of the store paths
    data_bytes: int

    @property
    def app(self) -> str:
        return next(p for p in self.references if p.endswith("-app-1.0"))


def finish_store(root: Path, references: dict[str, list[str]]) -> Store:
    closure = root / "closure.json"
    write_closure(root, references, closure)
    os.sync()  # clean pages, so that evict() can drop them
    entries = 0
    for path in references:
        for _folder, folders, names in os.walk(on_disk(root, path)):
            entries += len(folders) + len(names)
        entries += 1
    files = files_under(root / STORE.lstrip("/"))
    return Store(root, closure, references, files, entries, sum(f.stat().st_size for f in files))


def large_store(root: Path, total: int, seed: int = 1) -> Store:
    """Files of 10 to 500 MB (log-uniform), one to three per store path, and an app."""
    rng = random.Random(seed)
    block = rng.randbytes(16 << 20)
    references: dict[str, list[str]] = {}
    written, index = 0, 0
    while written < total:
        path = store_path(f"biglib{index:02d}-1.0")
        for j in range(rng.randint(1, 3)):
            size = min(int(10 * MB * 50 ** rng.random()), total - written)
            if size <= 0:
                break
            fill(on_disk(root, path) / "lib" / f"libbig{j}.so", size, block, rng.randrange(1 << 24))
            written += size
        references[path] = []
        index += 1
    app = store_path("app-1.0")
    fill(on_disk(root, app) / "bin" / "app", 100_000, block, 7)
    references[app] = sorted(references)
    return finish_store(root, references)


def small_store(root: Path, files: int, paths: int, seed: int = 2) -> Store:
    """The graph of a synthetic closure (scripts/synthetic.py), each path a small tree:
    bin/, lib/ with a .so symlink, share/doc/<name>/; files of a few KB."""
    sys.path.insert(0, str(HERE))
    from synthetic import generate, path_info

    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    entries = path_info(generate(paths, seed))
    per_path = files / len(entries)
    references: dict[str, list[str]] = {}
    for entry in entries:
        path = str(entry["path"])
        name = path.rsplit("/", 1)[1][33:]
        top = on_disk(root, path)
        for sub in ("bin", "lib", f"share/doc/{name}"):
            (top / sub).mkdir(parents=True)
        count = max(1, round(rng.uniform(0.5, 1.5) * per_path))
        for i in range(count):
            sub = "bin" if i % 10 == 0 else "lib" if i % 3 == 0 else f"share/doc/{name}"
            size = min(16384, int(rng.lognormvariate(7.8, 0.7)))
            start = rng.randrange(len(block) - size)
            (top / sub / f"f{i:04d}").write_bytes(block[start : start + size])
            if i % 10 == 0:
                (top / sub / f"f{i:04d}").chmod(0o755)
        (top / "lib" / f"lib{name}.so").symlink_to("f0003" if count > 3 else "../bin/f0000")
        references[path] = [str(r) for r in entry["references"]]  # type: ignore[union-attr]
    apps = [p for p in references if p.endswith("-app-1.0")]
    assert len(apps) == 1
    return finish_store(root, references)


def compressible_store(root: Path, total: int, seed: int = 3) -> Store:
    """Store paths of 2 to 20 MB of text-like data, one to four files each, and an app."""
    rng = random.Random(seed)
    block = compressible_block(32 << 20, seed)
    references: dict[str, list[str]] = {}
    written, index = 0, 0
    while written < total:
        path = store_path(f"textlib{index:02d}-2.0")
        size = min(int(2 * MB * 10 ** rng.random()), total - written)
        parts = rng.randint(1, 4)
        for j in range(parts):
            fill(
                on_disk(root, path) / "lib" / f"part{j}",
                size // parts,
                block,
                rng.randrange(len(block)),
            )
        written += size
        references[path] = []
        index += 1
    app = store_path("app-1.0")
    fill(on_disk(root, app) / "bin" / "app", 200_000, block, 11)
    references[app] = sorted(references)
    return finish_store(root, references)


def app_update(store: Store) -> Path:
    """A closure in which only the app changed: a new app path, the same references."""
    old = store.app
    new = store_path("app-1.1")
    shutil.copytree(on_disk(store.root, old), on_disk(store.root, new), symlinks=True)
    (on_disk(store.root, new) / "CHANGED").write_text("new build")
    references = {p: r for p, r in store.references.items() if p != old}
    references[new] = store.references[old]
    closure = store.root / "closure-1.1.json"
    write_closure(store.root, references, closure)
    return closure


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    bench: str
    what: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def rate(amount: float, seconds: float, unit: str) -> str:
    if unit == "GB/s":
        return f"{amount / seconds / GB:.2f} GB/s"
    if unit == "MB/s":
        return f"{amount / seconds / MB:.1f} MB/s"
    return f"{amount / seconds:,.0f} {unit}"


def print_table(rows: list[Row], header: list[str]) -> None:
    columns = ("#", "what", "nixlayer", "baseline", "ratio", "target", "met")
    cells = [[r.bench, r.what, r.value, r.baseline, r.ratio, r.target, r.met] for r in rows]
    widths = [max(len(c) for c in column) for column in zip(columns, *cells, strict=True)]
    for line in header:
        print(line)
    print()
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cell in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |")


def machine() -> list[str]:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout
    import nixlayer

    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}, "
        f"{platform.release()}",
        f"python {platform.python_version()}, {openssl.strip()}, "
        f"nixlayer from {Path(nixlayer.__file__).parent}",
        "load average at the start (1, 5, 15 min): "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]


# ------------------------------------------------------------------ the benchmarks


@dataclass
class Options:
    tmp: Path
    repeat: int
    cold: bool
    env: dict[str, str]
    large_bytes: int
    small_files: int
    small_paths: int
    oci_bytes: int
    rebuild_sizes: list[int]  # bytes
    plan_sizes: list[int]
    strategies: list[str]
    plan_timeout: float
    plan_memory: int
    levels: list[tuple[str, int]]
    memory_file: int
    auto_layer: Path | None
    fixed_sizes: list[int]
    fixed_repeat: int


def best(runs: Sequence[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def round_robin(
    commands: dict[str, tuple[list[str], int | None]],
    repeat: int,
    env: dict[str, str],
    before: Callable[[], None],
) -> dict[str, Run]:
    """Each command ``repeat`` times, interleaved, inputs read right before each round."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(repeat):
        before()
        for name, (command, stdout) in commands.items():
            runs[name].append(run(command, stdout, env))
            note(f"  {name}: {runs[name][-1].seconds:.2f} s")
    return {name: best(r) for name, r in runs.items()}


def emission(store: Store, options: Options, label: str) -> dict[str, Run]:
    """nixlayer's docker-archive to /dev/null, and the tar | openssl pipeline."""
    tar = f"tar --sort=name -cf - -C {store.root} nix | openssl dgst -sha256 > /dev/null"
    commands: dict[str, tuple[list[str], int | None]] = {
        "pipeline": (sh(tar), subprocess.DEVNULL),
        "cli": (
            nixlayer_cli(
                "from-closure", store.closure, "--store-root", store.root, "-q", "-o", "-"
            ),
            subprocess.DEVNULL,
        ),
        "library": (child("emit", store.closure, store.root), subprocess.PIPE),
    }
    cli = shlex.join(map(str, commands["cli"][0]))
    commands["pipe"] = (sh(f"{cli} | cat > /dev/null"), subprocess.DEVNULL)
    if label == "large":
        files = " ".join(str(f) for f in store.files)
        commands["openssl"] = (sh(f"openssl dgst -sha256 {files} > /dev/null"), None)
    note(f"{label}: {len(store.files)} files, {store.data_bytes / GB:.2f} GB, warm runs")
    warm_runs = round_robin(commands, options.repeat, options.env, lambda: warm(store.files))
    if options.cold:
        for name, (command, stdout) in commands.items():
            note(f"{label}: cold {name}")
            evict(store.files)
            warm_runs[f"cold {name}"] = run(command, stdout, options.env)
    return warm_runs


_EMISSION_RUNS = (
    ("cli", "CLI -o - >/dev/null"),
    ("pipe", "CLI -o - | cat >/dev/null"),
    ("library", "library, emission only"),
)


def _judged(name: str, target: str, met: bool) -> tuple[str, str]:
    """The target and verdict for the run issue #7 sets them for (the CLI onto stdout
    into /dev/null); the pipe and the library alone are shown to tell costs apart."""
    return (target, verdict(met)) if name == "cli" else ("", "")


def library_seconds(result: Run) -> float:
    return float(json.loads(result.stdout)["seconds"])


def bench_large(options: Options) -> list[Row]:
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="large-") as folder:
        note(f"large: writing {options.large_bytes / GB:.1f} GB")
        store = large_store(Path(folder), options.large_bytes)
        runs = emission(store, options, "large")
    size = store.data_bytes
    pipeline, openssl = runs["pipeline"].seconds, runs["openssl"].seconds
    rows = []
    for name, what in _EMISSION_RUNS:
        seconds = library_seconds(runs[name]) if name == "library" else runs[name].seconds
        speed = size / seconds / GB
        rows.append(
            Row(
                "1",
                f"large files ({size / GB:.1f} GB), {what}",
                rate(size, seconds, "GB/s"),
                f"tar|openssl {rate(size, pipeline, 'GB/s')}",
                f"{pipeline / seconds:.2f}x",
                *_judged(name, "≥1 GB/s, ≥0.9x", speed >= 1 and pipeline / seconds >= 0.9),
            )
        )
        if name == "cli":
            rows.append(
                Row(
                    "1",
                    f"large files ({size / GB:.1f} GB), {what}",
                    rate(size, seconds, "GB/s"),
                    f"openssl alone {rate(size, openssl, 'GB/s')}",
                    f"{openssl / seconds:.2f}x",
                )
            )
    if options.cold:
        seconds = runs["cold cli"].seconds
        cold_pipeline = runs["cold pipeline"].seconds
        rows.append(
            Row(
                "1",
                "large files, CLI, cold cache",
                rate(size, seconds, "GB/s"),
                f"tar|openssl cold {rate(size, cold_pipeline, 'GB/s')}",
                f"{cold_pipeline / seconds:.2f}x",
                "(cold: the disk)",
            )
        )
    return rows


def bench_small(options: Options) -> list[Row]:
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="small-") as folder:
        note(f"small: writing {options.small_files} files in {options.small_paths} store paths")
        store = small_store(Path(folder), options.small_files, options.small_paths)
        runs = emission(store, options, "small")
    n = store.entries
    pipeline = runs["pipeline"].seconds
    rows = []
    for name, what in _EMISSION_RUNS:
        seconds = library_seconds(runs[name]) if name == "library" else runs[name].seconds
        met = n / seconds >= 40_000 and pipeline / seconds >= 0.5
        rows.append(
            Row(
                "2",
                f"{n:,} small entries ({store.data_bytes / MB:.0f} MB), {what}",
                rate(n, seconds, "entries/s"),
                f"tar|openssl {rate(n, pipeline, 'entries/s')}",
                f"{pipeline / seconds:.2f}x",
                *_judged(name, "≥40,000/s, ≥0.5x", met),
            )
        )
    if options.cold:
        seconds, cold_pipeline = runs["cold cli"].seconds, runs["cold pipeline"].seconds
        rows.append(
            Row(
                "2",
                "small entries, CLI, cold cache",
                rate(n, seconds, "entries/s"),
                f"tar|openssl cold {rate(n, cold_pipeline, 'entries/s')}",
                f"{cold_pipeline / seconds:.2f}x",
                "(cold: the disk)",
            )
        )
    return rows


def bench_oci(options: Options) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="oci-") as folder:
        note(f"oci: writing {options.oci_bytes / MB:.0f} MB of compressible store paths")
        store = compressible_store(Path(folder, "store"), options.oci_bytes)
        size = store.data_bytes
        for algorithm, level in options.levels:
            # One worker and two in turn, so that a burst of other work on the machine
            # slows some of each rather than all of one; the best of each counts.
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for _ in range(options.repeat):
                for workers, done in runs.items():
                    out = Path(folder, f"layout-{workers}")
                    warm(store.files)
                    shutil.rmtree(out, ignore_errors=True)
                    command = child(
                        "oci", store.closure, store.root, out, algorithm, level, workers
                    )
                    done.append(json.loads(run(command, subprocess.PIPE, options.env).stdout))
                    note(f"oci: {algorithm} -{level}, {workers} worker(s): {done[-1]}")
            results = {w: min(r, key=lambda result: result["seconds"]) for w, r in runs.items()}
            one, two = results[1]["seconds"], results[2]["seconds"]
            assert results[1]["digests"] == results[2]["digests"], "workers changed the bytes"
            ratio = size / results[2]["blob_bytes"]
            rows.append(
                Row(
                    "3",
                    f"OCI {algorithm} -{level}, 2 workers ({ratio:.1f}:1, "
                    f"{results[2]['layers']} layers)",
                    rate(size, two, "MB/s"),
                    f"1 worker {rate(size, one, 'MB/s')}",
                    f"{one / two:.2f}x",
                    "≥1.8x",
                    verdict(one / two >= 1.8),
                )
            )
    return rows


def bench_rebuild(options: Options) -> list[Row]:
    """At each store size: the rebuild's time stays that of the start-up and the change,
    while the first build's grows with the store."""
    return [_rebuild_row(options, size) for size in options.rebuild_sizes]


def _rebuild_row(options: Options, total: int) -> Row:
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="rebuild-") as folder:
        note(f"rebuild: writing {total / MB:.0f} MB of compressible store paths")
        store = compressible_store(Path(folder, "store"), total)
        updated = app_update(store)
        layout, cache = Path(folder, "layout"), Path(folder, "cache")
        common = (
            "--store-root",
            store.root,
            "--format",
            "oci",
            "-o",
            layout,
            "--cache-dir",
            cache,
            "-q",
        )
        firsts, seconds = [], []
        for _ in range(options.repeat):
            shutil.rmtree(layout, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            warm(store.files)
            firsts.append(
                run(nixlayer_cli("from-closure", store.closure, *common), env=options.env)
            )
            warm(files_under(on_disk(store.root, store_path("app-1.1"))))
            seconds.append(run(nixlayer_cli("from-closure", updated, *common), env=options.env))
            note(f"rebuild: first {firsts[-1].seconds:.2f} s, second {seconds[-1].seconds:.2f} s")
        first, second = best(firsts).seconds, best(seconds).seconds
        size = store.data_bytes
    return Row(
        "4",
        f"rebuild after an app change, OCI gzip, {size / MB:.0f} MB store",
        f"{second:.2f} s",
        f"first build {first:.2f} s",
        f"{second / first:.1%}",
        "≤5 %",
        verdict(second / first <= 0.05),
    )


def _plan_target(paths: int, strategy: str, seconds: float | None, rss_kb: int) -> tuple[str, str]:
    limit = {50_000: 2.0, 200_000: 10.0}.get(paths)
    if strategy not in ("cochange", "popularity") or limit is None:
        return "", ""
    ok = seconds is not None and seconds < limit and rss_kb < 1.5e6
    return f"<{limit:.0f} s, <1.5 GB", verdict(ok)


def _json_lines(output: bytes) -> dict[str, float]:
    """What a child printed before it ended or was stopped: one JSON object a line."""
    figures: dict[str, float] = {}
    for line in output.splitlines():
        figures.update(json.loads(line))
    return figures


def _planning_child(
    kind: str, closure: Path, strategy: str, options: Options
) -> tuple[Run, dict[str, float]]:
    """One planning child on a freshly read closure file: its run and its figures."""
    closure.read_bytes()
    result = run(
        child(kind, closure, strategy),
        subprocess.PIPE,
        options.env,
        timeout=options.plan_timeout,
        check=False,
        memory_limit=options.plan_memory,
    )
    return result, _json_lines(result.stdout)


def bench_planning(options: Options) -> list[Row]:
    """Per size and strategy, two children: ``make_plan`` as the CLI runs it (closure
    to plan, graph.path_graph included), and the strategy alone on the graph, to tell
    the two costs apart."""
    sys.path.insert(0, str(HERE))
    from synthetic import generate, path_info

    rows = []
    timeout = options.plan_timeout
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="plan-") as folder:
        for paths in options.plan_sizes:
            closure = Path(folder, f"closure-{paths}.json")
            note(f"planning: generating {paths} paths")
            # In the order nix path-info prints them: sorted by store path.
            entries = sorted(path_info(generate(paths)), key=lambda e: str(e["path"]))
            closure.write_text(json.dumps(entries))
            figures: dict[str, float | None] = {}
            graph_too_slow = False
            for strategy in options.strategies:
                alone, data = _planning_child("strategy", closure, strategy, options)
                note(f"planning: {paths} paths, {strategy} alone: {data}")
                seconds = data.get("strategy")
                figures[strategy] = seconds
                text = (
                    f"{seconds:.2f} s, {alone.maxrss_kb / 1e6:.2f} GB peak"
                    if seconds is not None
                    else f"> {timeout:.0f} s (stopped)"
                    if alone.timed_out
                    else f"failed: exit {alone.returncode} at {alone.maxrss_kb / 1e6:.2f} GB "
                    "(memory limit?)"
                )
                whole = "make_plan not run: path_graph alone over the time limit"
                plan_seconds = None
                plan_rss = 0
                if not graph_too_slow:
                    result, plan = _planning_child("plan", closure, strategy, options)
                    note(f"planning: {paths} paths, {strategy} make_plan: {plan}")
                    plan_seconds, plan_rss = plan.get("plan"), result.maxrss_kb
                    if plan_seconds is not None:
                        whole = (
                            f"make_plan {plan_seconds:.2f} s, {plan_rss / 1e6:.2f} GB; "
                            f"path_graph {plan['path_graph']:.2f} s"
                        )
                    elif not result.timed_out:
                        whole = f"make_plan failed: exit {result.returncode} (memory limit?)"
                    elif "path_graph" in plan:
                        whole = (
                            f"make_plan > {timeout:.0f} s; path_graph {plan['path_graph']:.2f} s"
                        )
                    else:
                        graph_too_slow = True
                        whole = f"make_plan > {timeout:.0f} s, in path_graph"
                rows.append(
                    Row(
                        "5",
                        f"plan {paths:,} paths, {strategy}",
                        f"{text} (strategy alone)",
                        whole,
                        "",
                        *_plan_target(paths, strategy, plan_seconds, plan_rss),
                    )
                )
            default, auto = figures.get("cochange"), figures.get("auto", 0)
            if default is not None and auto != 0:
                rows.append(
                    Row(
                        "5",
                        f"plan {paths:,} paths, cochange vs auto (strategies alone)",
                        f"{default:.2f} s",
                        f"auto {auto:.2f} s" if auto else f"auto > {timeout:.0f} s",
                        f"{default / auto:.2f}x" if auto else "",
                        "≤1x",
                        verdict(auto is None or default <= auto),
                    )
                )
        biggest = Path(folder, f"closure-{max(options.plan_sizes)}.json")
        biggest.read_bytes()
        result = run(child("read", biggest), subprocess.PIPE, options.env, check=False)
        data = json.loads(result.stdout)
        rows.append(
            Row(
                "5",
                f"read_closure, {max(options.plan_sizes):,} paths (path-info list)",
                f"{data['read']:.2f} s, {result.maxrss_kb / 1e6:.2f} GB peak",
            )
        )
    return rows


def bench_memory(options: Options) -> list[Row]:
    peaks = {}
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="memory-") as folder:
        for label, size in (("small", 4096), ("sparse", options.memory_file)):
            root = Path(folder, label)
            path = store_path("app-1.0")
            target = on_disk(root, path) / "data"
            target.parent.mkdir(parents=True)
            with open(target, "wb") as f:
                f.truncate(size)
            store = finish_store(root, {path: []})
            command = nixlayer_cli(
                "from-closure", store.closure, "--store-root", root, "-q", "-o", "-"
            )
            peaks[label] = best([run(command, env=options.env) for _ in range(2)])
            note(f"memory: {label}: {peaks[label]}")
    grown = (peaks["sparse"].maxrss_kb - peaks["small"].maxrss_kb) / 1000
    return [
        Row(
            "6",
            f"peak RSS, one {options.memory_file / GB:.1f} GB (sparse) file",
            f"{peaks['sparse'].maxrss_kb / 1000:.1f} MB",
            f"one 4 KB file {peaks['small'].maxrss_kb / 1000:.1f} MB",
            f"+{grown:.1f} MB",
            "≤ +5 MB",
            verdict(grown <= 5),
        ),
    ]


# How many libraries of other chains a library of a synthetic closure uses (drawn from
# these): "dense", 2.4 on average, makes 300,000 references at 50,000 paths (28 MB),
# about what issue #15 measured on; "sparse" is synthetic.py's default, 0.8 (220,000
# references, 22 MB), where auto-layer.py's walks are shorter.
FIXED_SHAPES = {"dense": (1, 2, 2, 3, 4), "sparse": (0, 0, 1, 1, 2)}


def bench_fixed(options: Options) -> list[Row]:
    """Whole processes side by side on the same graph, interleaved: nixpkgs'
    ``auto-layer.py`` (from a copy made for the run: it is never part of this tree)
    and ``nixlayer plan``, both reading a writeReferencesGraph file; then the start of
    ``nixlayer --help`` and of a plan of the 8-path fixture. Each input is read right
    before each timed run; each figure is the best of ``--fixed-repeat`` runs."""
    if options.auto_layer is None or not options.auto_layer.is_file():
        raise SystemExit(
            "bench: --only fixed needs --auto-layer PATH, a copy of nixpkgs' "
            "pkgs/build-support/docker/auto-layer.py"
        )
    rows = []
    with tempfile.TemporaryDirectory(dir=options.tmp, prefix="fixed-") as folder:
        auto_layer = Path(folder, "auto-layer.py")
        shutil.copyfile(options.auto_layer, auto_layer)
        ignore = Path(folder, "ignore")
        ignore.write_text("")
        for paths, shape in itertools.product(options.fixed_sizes, FIXED_SHAPES):
            graph = Path(folder, f"graph-{paths}-{shape}.json")
            note(f"fixed: generating {paths} paths, {shape}")
            # In a child, so that this process stays small: a child's ru_maxrss starts
            # from the size of the process it was forked from.
            run(child("graph", paths, shape, graph), env=options.env)
            references = json.loads(run(child("count", graph), subprocess.PIPE).stdout)
            commands = {
                "auto-layer.py": [sys.executable, auto_layer, graph, ignore, 100],
                "nixlayer plan": nixlayer_cli("plan", "-q", "--max-layers", 100, graph),
            }
            if paths == max(options.fixed_sizes):
                rows += _parsers(graph, options, f"{paths:,} paths, {shape}")
            best_runs = _side_by_side(commands, options, [graph])
            theirs, ours = best_runs["auto-layer.py"], best_runs["nixlayer plan"]
            what = (
                f"plan {paths:,} paths, {shape} ({graph.stat().st_size / MB:.0f} MB, "
                f"{references:,} refs)"
            )
            time_ratio = ours.seconds / theirs.seconds
            rss_ratio = ours.maxrss_kb / theirs.maxrss_kb
            rows.append(
                Row(
                    "7",
                    f"{what}, time",
                    f"{ours.seconds:.2f} s",
                    f"auto-layer.py {theirs.seconds:.2f} s",
                    f"{time_ratio:.2f}x",
                    "≤1x",
                    verdict(time_ratio <= 1),
                )
            )
            rows.append(
                Row(
                    "7",
                    f"{what}, peak RSS",
                    f"{ours.maxrss_kb / 1000:.0f} MB",
                    f"auto-layer.py {theirs.maxrss_kb / 1000:.0f} MB",
                    f"{rss_ratio:.2f}x",
                    "≤1.5x",
                    verdict(rss_ratio <= 1.5),
                )
            )
    fixture = HERE.parent / "fixtures" / "store-closure.json"
    starts = {
        "nixlayer --help": nixlayer_cli("--help"),
        "nixlayer plan, 8-path fixture": nixlayer_cli("plan", "-q", fixture),
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    started = _side_by_side(starts, options, [fixture], repeat=5 * options.fixed_repeat)
    bare = started.pop("python -c pass").seconds
    for name, result in started.items():
        rows.append(
            Row(
                "7",
                f"start: {name}",
                f"{result.seconds:.3f} s",
                f"python -c pass {bare:.3f} s",
                "",
                "<0.15 s",
                verdict(result.seconds < 0.15),
            )
        )
    return rows


def _parsers(graph: Path, options: Options, what: str) -> list[Row]:
    """The closure reader against JSON parsers reading the same file whole, in one child
    (the best of three each): why the reader is what it is."""
    graph.read_bytes()
    result = run(child("parse", graph), subprocess.PIPE, options.env)
    figures = json.loads(result.stdout)
    note(f"fixed: parsers on {what}: {figures}")
    whole = figures.pop("json.loads")
    return [
        Row("7", f"read {what}: {name}", f"{seconds:.3f} s", f"json.loads {whole:.3f} s",
            f"{seconds / whole:.2f}x")
        for name, seconds in figures.items()
    ]  # fmt: skip


def _side_by_side(
    commands: dict[str, list[Any]], options: Options, inputs: list[Path], repeat: int = 0
) -> dict[str, Run]:
    """Each command run in turn, ``repeat`` (default ``--fixed-repeat``) rounds, its
    inputs read right before each run; per command, its fastest run with the lowest
    peak RSS any of its runs had (both vary with the machine's load, not the input)."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(repeat or options.fixed_repeat):
        for name, command in commands.items():
            warm(inputs)
            runs[name].append(run([str(part) for part in command], env=options.env))
            note(f"  {name}: {runs[name][-1].seconds:.3f} s, {runs[name][-1].maxrss_kb} KB")
    return {
        name: Run(best(results).seconds, min(r.maxrss_kb for r in results))
        for name, results in runs.items()
    }


# ------------------------------------------------------- what the children measure


def _spec(closure: str, root: str):  # type: ignore[no-untyped-def]
    from nixlayer.build import ClosureInput, image_settings, load_closure, plan_image
    from nixlayer.customisation import Customisation
    from nixlayer.image import ImageSpec
    from nixlayer.strategies import DEFAULT_STRATEGY

    source = ClosureInput(Path(closure), store_root=Path(root))
    loaded = load_closure(source, lambda message: None)
    plan, layers = plan_image(loaded, Path(root), Customisation(), None, DEFAULT_STRATEGY, 100)
    from nixlayer.build import Identity

    settings = image_settings(Identity(), plan.roots, None, {})
    return ImageSpec(settings, {}, layers, None)


class Discard:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


def child_emit(closure: str, root: str) -> None:
    from nixlayer.formats.docker_archive import write_stream
    from nixlayer.formats.writing import Writing

    spec = _spec(closure, root)
    started = time.perf_counter()
    write_stream(spec, Discard(), Writing())  # type: ignore[arg-type]
    print(json.dumps({"seconds": time.perf_counter() - started}))


def child_oci(closure: str, root: str, out: str, algorithm: str, level: str, workers: str) -> None:
    from nixlayer.cache import LayerCache
    from nixlayer.compression import Compression
    from nixlayer.formats import oci, oci_layout
    from nixlayer.formats.writing import Writing

    spec = _spec(closure, root)
    oci.WORKERS = int(workers)
    started = time.perf_counter()
    written = oci_layout.write_folder(
        spec, Path(out), Writing(Compression(algorithm, int(level)), LayerCache(None))
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "layers": len(written.layers),
                "blob_bytes": sum(layer.size for layer in written.layers),
                "digests": hashlib.sha256(
                    " ".join(layer.digest for layer in written.layers).encode()
                ).hexdigest(),
            }
        )
    )


def _say(**figures: float) -> None:
    print(json.dumps(figures), flush=True)


def child_plan(closure: str, strategy: str) -> None:
    """``make_plan`` end to end; ``path_graph`` timed first, on its own."""
    from nixlayer.graph import path_graph
    from nixlayer.plan import make_plan
    from nixlayer.readers import read_closure

    started = time.perf_counter()
    loaded = read_closure(Path(closure))
    _say(read=time.perf_counter() - started)
    started = time.perf_counter()
    path_graph(loaded)
    _say(path_graph=time.perf_counter() - started)
    started = time.perf_counter()
    plan = make_plan(loaded, strategy, 100)
    _say(plan=time.perf_counter() - started, layers=len(plan.layers))


def child_strategy(closure: str, strategy: str) -> None:
    """The strategy alone, given what ``make_plan`` gives it (the whole graph, the cycle
    collector paused)."""
    from nixlayer.gcpause import no_cycle_collection
    from nixlayer.graph import find_roots, path_graph
    from nixlayer.readers import read_closure
    from nixlayer.strategies import STRATEGIES

    graph = path_graph(read_closure(Path(closure)))
    roots = find_roots(graph)
    with no_cycle_collection():
        started = time.perf_counter()
        STRATEGIES[strategy](graph, roots, 100)
        seconds = time.perf_counter() - started
    _say(strategy=seconds)


def child_read(closure: str) -> None:
    from nixlayer.readers import read_closure

    started = time.perf_counter()
    loaded = read_closure(Path(closure))
    print(json.dumps({"read": time.perf_counter() - started, "paths": len(loaded.paths)}))


def child_graph(paths: str, shape: str, out: str) -> None:
    """A closure of ``paths`` store paths as writeReferencesGraph writes it, of a shape
    in ``FIXED_SHAPES``."""
    sys.path.insert(0, str(HERE))
    from synthetic import generate, references_graph

    entries = references_graph(generate(int(paths), borrowed=FIXED_SHAPES[shape]))
    Path(out).write_text(json.dumps(entries))


def child_parse(graph: str) -> None:
    """Seconds to read a writeReferencesGraph file: ``read_closure`` (the quick way, and
    the careful one alone), ``jsonstream.load`` alone, and parsers that read it whole
    (orjson and ijson's C backend where installed: nixlayer does not use them)."""
    import gc

    from nixlayer import jsonstream, readers

    path = Path(graph)

    def stream() -> object:
        with path.open("rb") as file:
            window = jsonstream.TextWindow(file, graph)
            return jsonstream.load(window, readers._compactor(), lambda key: False)

    def careful() -> object:
        quick, readers._quick_closure = readers._quick_closure, lambda *args: None
        try:
            return readers.read_closure(path)
        finally:
            readers._quick_closure = quick

    ways: dict[str, Callable[[], object]] = {
        "json.loads": lambda: json.loads(path.read_bytes()),
        "read_closure": lambda: readers.read_closure(path),
        "jsonstream.load alone": stream,
    }
    if hasattr(readers, "_quick_closure"):  # a tree before it had none
        ways["read_closure, careful readers alone"] = careful
    try:
        import orjson  # type: ignore[import-not-found]

        ways["orjson.loads (no check for keys twice)"] = lambda: orjson.loads(path.read_bytes())
    except ImportError:
        pass
    try:
        import ijson  # type: ignore[import-not-found]

        def items() -> object:
            with path.open("rb") as file:
                return list(ijson.items(file, "item"))

        ways[f"ijson.items, {ijson.backend} (no check for keys twice)"] = items
    except ImportError:
        pass
    figures = {}
    for name, way in ways.items():
        times = []
        for _ in range(3):
            gc.collect()
            started = time.perf_counter()
            way()
            times.append(time.perf_counter() - started)
        figures[name] = min(times)
    print(json.dumps(figures))


def child_count(graph: str) -> None:
    """How many references a writeReferencesGraph file names."""
    print(sum(len(entry["references"]) for entry in json.loads(Path(graph).read_text())))


CHILDREN = {
    "emit": child_emit,
    "oci": child_oci,
    "plan": child_plan,
    "read": child_read,
    "strategy": child_strategy,
    "graph": child_graph,
    "count": child_count,
    "parse": child_parse,
}


# ---------------------------------------------------------------------------- main


def parse_levels(text: str) -> list[tuple[str, int]]:
    levels = []
    for item in text.split(","):
        algorithm, _, level = item.partition("-")
        levels.append((algorithm, int(level)))
    return levels


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child-"):
        CHILDREN[sys.argv[1].removeprefix("--child-")](*sys.argv[2:])
        return
    signal.signal(signal.SIGTERM, _interrupted)  # unwind, so the inputs are removed
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help="comma-separated (default: all; fixed only with --auto-layer)"
    )
    parser.add_argument(
        "--src", type=Path, help="the nixlayer tree to measure (holds nixlayer/; default: this one)"
    )
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also runs with the cache dropped")
    parser.add_argument("--large-gb", type=float, default=3.0)
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--small-paths", type=int, default=2_500)
    parser.add_argument("--oci-mb", type=float, default=200)
    parser.add_argument("--rebuild-mb", default="500,2000", help="store sizes, comma-separated")
    parser.add_argument("--plan-sizes", default="5000,50000,200000")
    parser.add_argument("--strategies", default="cochange,popularity,auto")
    parser.add_argument("--plan-timeout", type=float, default=60)
    parser.add_argument(
        "--plan-memory-gb", type=float, default=6, help="address space a planning child may use"
    )
    parser.add_argument("--levels", default="gzip-1,gzip-6,gzip-9,zstd-1,zstd-3,zstd-9")
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument(
        "--auto-layer", type=Path, help="nixpkgs' auto-layer.py for --only fixed (run from a copy)"
    )
    parser.add_argument("--fixed-sizes", default="5000,50000", help="paths, comma-separated")
    parser.add_argument("--fixed-repeat", type=int, default=5)
    args = parser.parse_args()
    # Every child imports nixlayer from this tree, whatever is installed meanwhile.
    src = (args.src or HERE.parent).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    sys.path.insert(0, str(src))
    # Run from bytecode, as an installed nixlayer does (pip compiles it at install):
    # with PYTHONDONTWRITEBYTECODE set, each run would compile the tree anew.
    compileall.compile_dir(src / "nixlayer", quiet=1)
    env.pop("SOURCE_DATE_EPOCH", None)
    env["XDG_CACHE_HOME"] = str(args.tmp / "nixlayer-bench-unused-cache")
    options = Options(
        tmp=args.tmp,
        repeat=args.repeat,
        cold=args.cold,
        env=env,
        large_bytes=int(args.large_gb * GB),
        small_files=args.small_files,
        small_paths=args.small_paths,
        oci_bytes=int(args.oci_mb * MB),
        rebuild_sizes=[int(float(mb) * MB) for mb in args.rebuild_mb.split(",")],
        plan_sizes=[int(s) for s in args.plan_sizes.split(",")],
        strategies=args.strategies.split(","),
        plan_timeout=args.plan_timeout,
        plan_memory=int(args.plan_memory_gb * GB),
        levels=parse_levels(args.levels),
        memory_file=int(args.memory_gb * GB),
        auto_layer=args.auto_layer,
        fixed_sizes=[int(s) for s in args.fixed_sizes.split(",")],
        fixed_repeat=args.fixed_repeat,
    )
    header = machine()
    benches: dict[str, Callable[[Options], list[Row]]] = {
        "large": bench_large,
        "small": bench_small,
        "oci": bench_oci,
        "rebuild": bench_rebuild,
        "planning": bench_planning,
        "memory": bench_memory,
        "fixed": bench_fixed,
    }
    rows: list[Row] = []
    default = [name for name in BENCHMARKS if name != "fixed" or args.auto_layer]
    for name in args.only.split(",") if args.only else default:
        if name not in benches:
            raise SystemExit(f"bench: --only {name}: expected some of {', '.join(BENCHMARKS)}")
        started = time.perf_counter()
        rows += benches[name](options)
        note(f"{name}: done in {time.perf_counter() - started:.0f} s")
    shutil.rmtree(options.tmp / "nixlayer-bench-unused-cache", ignore_errors=True)
    header.append("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print_table(rows, header)


if __name__ == "__main__":
    main()

"""`softmask` command line: thin wrappers over the typed API (parse, set up parallelism and
progress, call, summarise).

Every command prints one JSON object on stdout (the summary) and its progress and errors on
stderr. Exit codes are the table of :mod:`softmask_builder.exitcodes` (shared with ``dsnet``):
0 ok, 1 internal error, 2 usage or bad input, 3 verify mismatch, 4 nothing built, 5 I/O error
(disk full: the message names the path), 6 ``--out`` locked by another build.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from softmask_builder import __version__
from softmask_builder.core import atomic
from softmask_builder.errors import SoftMaskError
from softmask_builder.exitcodes import EXIT_EMPTY, EXIT_INPUT, EXIT_INTERNAL, EXIT_IO, EXIT_LOCKED, EXIT_OK, EXIT_VERIFY  # noqa: F401
from softmask_builder.exitcodes import io_error_message
from softmask_builder.core.executor import fork_available

#: Default recipe and the recipe sources each ``build`` subcommand accepts.
BUILD_KINDS = {
    "deeplesion": ("lnsm", ("deeplesion",)),
    "lidc": ("lidc", ("lidc",)),
    "masks": ("masks", ("masks",)),
    "slices": ("slices", ("deeplesion_slices", "lidc_slices")),
}
#: The 3-D variant of a ``build`` subcommand (issue 26): ``--volumes`` builds with this bundled recipe
#: (a volume source: one (Z, H, W) crop per nodule, shards of kind "volumes").
VOLUME_KINDS = {"lidc": ("lidc3d", ("lidc_volumes",)), "masks": ("masks3d", ("nifti_volumes",))}
#: Default ``--out`` of each ``build`` subcommand: the make target's folder (``make lidc`` -> build/lidc).
DEFAULT_OUT = {"deeplesion": Path("build/lnsm"), "lidc": Path("build/lidc"), "masks": Path("build/masks"),
               "slices": Path("build/slices")}
DEFAULT_OUT_VOLUMES = {"lidc": Path("build/lidc3d"), "masks": Path("build/masks3d")}


def _bundled_recipes() -> str:
    from softmask_builder.formats.recipes import MANIFESTS_DIR

    return ", ".join(sorted(p.stem for p in MANIFESTS_DIR.glob("*.yaml")))


class _Fail(click.ClickException):
    """An input error reported as ``error: ...`` on stderr with exit code 2 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.exit_code = code


@contextmanager
def _input_errors(io_path=None):
    """Turn the package's input errors into exit code 2 and I/O errors (``OSError``: disk full,
    permission denied) into exit code 5, each with a one-line message; ``io_path`` is the path
    named when the OSError carries none (HDF5 reports a full disk without a file name)."""
    from softmask_builder.formats.release_folder import ManifestError

    try:
        yield
    except ManifestError as exc:  # a damaged manifest.json / SHA256SUMS: the folder fails verification
        raise _Fail(str(exc), code=EXIT_VERIFY) from None
    except SoftMaskError as exc:
        raise _Fail(str(exc)) from None
    except OSError as exc:
        raise _Fail(io_error_message(exc, io_path), code=EXIT_IO) from None


def _emit(data) -> None:
    click.echo(json.dumps(data, indent=1, sort_keys=True, default=str))


def _say(line: str) -> None:
    """The one human summary line of a long command, on stderr (stdout keeps the JSON)."""
    click.echo(line, err=True)


#: --backend choices; "multiprocessing" (forked workers) only where the platform forks safely.
BACKENDS = (["multiprocessing"] if fork_available() else []) + ["loky", "dask"]
DEFAULT_BACKEND = BACKENDS[0]
BACKEND_HELP = ("Where the jobs run: multiprocessing = worker processes forked from this one, which inherit its "
                "imports and loaded kernels (the cheapest start; Linux), loky = fresh worker processes, dask = a "
                "dask cluster (--scheduler, or a LocalCluster of --jobs workers).")


@contextmanager
def parallel_setup(backend: str, jobs: int, scheduler: str | None):
    """``joblib.parallel_config`` for the build: ``jobs`` processes forked from this one
    ("multiprocessing", see :mod:`softmask_builder.core.executor`) or started fresh by loky, or dask through
    ``scheduler`` (a ``tcp://`` address) or a LocalCluster of ``jobs`` single-threaded workers."""
    import joblib

    if jobs < 1:
        raise _Fail(f"--jobs must be >= 1, got {jobs}")
    if backend in ("loky", "multiprocessing"):
        if scheduler:
            raise _Fail("--scheduler needs --backend dask")
        from softmask_builder.core.executor import shutdown_prestarted

        with joblib.parallel_config(backend=backend, n_jobs=jobs):
            try:
                yield
            finally:
                shutdown_prestarted()  # forked workers end with the command
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise _Fail("--backend dask needs dask.distributed: pip install 'softmask-toolkit[dask]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            # ":0": the dashboard on any free port (None means the default 8787, which another
            # cluster on the machine may hold, and then the cluster fails to start).
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
    except OSError as exc:
        raise _Fail(f"cannot reach the dask scheduler {scheduler!r}: {exc}") from None
    try:
        with joblib.parallel_config(backend="dask", n_jobs=-1 if scheduler else jobs):
            yield
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _progress_bar(total: int, enabled: bool | None):
    """The build's progress: a bar on a terminal, a line every 10 % elsewhere (CI logs, `make | tee`);
    see :mod:`softmask_builder.core.progress`."""
    from softmask_builder.core.progress import progress

    bar = progress(total, desc="build", unit="sample", enabled=enabled)
    rejected = [0]

    def update(result) -> None:
        rejected[0] += len(result.rejects)
        bar.set_postfix(rejects=rejected[0])
        bar.update(result.n_planned)

    return bar, update


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread, so that a terminated build runs its
    ``finally`` blocks (queued tasks cancelled, the ``--out`` lock released) like Ctrl-C does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_build(recipe, source: Path, out: Path | None, *, jobs: int, backend: str, scheduler: str | None,
               dry_run: bool, limit: int | None, overwrite: bool, progress: bool | None) -> dict:
    """Plan, then (unless ``dry_run``) build; return the summary dict. Raises _Fail on input errors.

    Planning runs under the same parallel setup as the build (the LIDC header scan uses it)."""
    import time

    from softmask_builder.dataset.build import plan_build, run_build
    from softmask_builder.dataset.locking import OutLockedError

    if out is None:
        raise _Fail("--out is required")  # every caller passes its default folder
    with _sigterm_as_interrupt(), parallel_setup(backend, jobs, scheduler):
        t0 = time.perf_counter()
        if not dry_run:
            from softmask_builder.core.executor import prestart

            prestart("softmask_builder.dataset.build:warm_worker")  # workers import while we plan
        with _input_errors():
            plan = plan_build(recipe, source, limit=limit)
        t_plan = time.perf_counter() - t0
        if dry_run:
            return {"dry_run": True, "out": str(out), **plan.summary()}
        bar, update = _progress_bar(plan.n_planned, progress)
        try:
            with _input_errors(out):
                try:
                    result = run_build(plan, out, overwrite=overwrite, progress=update)
                except OutLockedError as exc:
                    raise _Fail(str(exc), code=EXIT_LOCKED) from None
        finally:
            bar.close()
    return {**result.summary(), "seconds": {"plan": round(t_plan, 3), **result.seconds}}


def _echo_warnings(summary: dict) -> None:
    """The summary's warnings (empty splits, empty shards) on stderr as well."""
    for warning in summary.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


def _common_build_options(func):
    options = [
        click.option("--recipe", "recipe_name", default=None,
                     help=f"Recipe YAML path or bundled name ({_bundled_recipes()})."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Output folder (default: the make target's, build/lnsm, build/lidc, build/masks or "
                          "build/slices)."),
        click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Parallel shard jobs."),
        click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
                     help=BACKEND_HELP),
        click.option("--scheduler", default=None,
                     help="dask scheduler address (tcp://host:8786); default: a LocalCluster of --jobs workers."),
        click.option("--dry-run", is_flag=True, help="Plan only: print the splits and shard counts, write nothing."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N planned samples (by sample_id): a trial build."),
        click.option("--overwrite", is_flag=True, help="Rebuild every shard (default: finished shards are kept)."),
        click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a tty)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _build_command(kind: str):
    default_recipe, sources = BUILD_KINDS[kind]

    volume_recipe, volume_sources = VOLUME_KINDS.get(kind, (None, ()))

    def command(source, recipe_name, out, jobs, backend, scheduler, dry_run, limit, overwrite, progress,
                volumes=False, isotropic=None):
        import dataclasses
        import time

        from softmask_builder.formats.recipes import load_recipe
        from softmask_builder.cli.summaries import build_line, nothing_built_error

        started = time.monotonic()
        name = recipe_name or (volume_recipe if volumes else default_recipe)
        with _input_errors():
            recipe = load_recipe(name)
        allowed = volume_sources if volumes else sources + volume_sources
        if recipe.source not in allowed:
            raise _Fail(f"recipe {name!r} builds source {recipe.source!r}; `softmask build {kind}"
                        f"{' --volumes' if volumes else ''}` takes a recipe with source {' or '.join(allowed)}")
        if isotropic is not None:
            if recipe.kind != "volumes":
                raise _Fail(f"--isotropic/--no-isotropic applies to a volume build (--volumes); recipe {name!r} "
                            f"builds 2-D samples")
            recipe = dataclasses.replace(recipe, volume=dataclasses.replace(recipe.volume, isotropic=isotropic))
        default_out = DEFAULT_OUT_VOLUMES[kind] if recipe.kind == "volumes" else DEFAULT_OUT[kind]
        summary = _run_build(recipe, source, out or default_out, jobs=jobs, backend=backend, scheduler=scheduler,
                             dry_run=dry_run, limit=limit, overwrite=overwrite, progress=progress)
        _emit(summary)
        _echo_warnings(summary)
        if dry_run or summary["n_samples"]:  # else the error line below says it
            _say(build_line(summary, kind="slices" if kind == "slices" else recipe.kind,
                            seconds=time.monotonic() - started))
        if not dry_run and summary["n_samples"] == 0:
            raise _Fail(nothing_built_error(summary), code=EXIT_EMPTY)

    command.__doc__ = (f"Build a dataset from a {kind} source folder SOURCE (default recipe: {default_recipe}; "
                       f"default --out {DEFAULT_OUT[kind]}). Prints a JSON summary on stdout.")
    if volume_recipe:
        command.__doc__ += (f" With --volumes: one 3-D crop per nodule (recipe {volume_recipe}, shards of kind "
                            f"volumes, default --out {DEFAULT_OUT_VOLUMES[kind]}).")
        command = click.option("--isotropic/--no-isotropic", default=None,
                               help="Volume builds: matte on near-isotropic voxels (resampled along z and back) "
                                    "or on the original grid (default: the recipe's volume.isotropic, itself "
                                    "ISOTROPIC_DEFAULT unless the recipe sets it).")(command)
        command = click.option("--volumes", is_flag=True,
                               help=f"Build 3-D volume crops (recipe {volume_recipe} unless --recipe names another "
                                    "volume recipe).")(command)
    command = _common_build_options(command)
    command = click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))(command)
    return click.command(name=kind)(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="softmask")
def main() -> None:
    """Build Soft Mask datasets (trimaps + closed-form matting) into verifiable HDF5 shards.

    Exit codes: 0 ok, 1 internal error, 2 usage/input error, 3 verify mismatch, 4 nothing built,
    5 I/O error (disk full), 6 --out locked by another build.
    """


@main.group()
def build() -> None:
    """Build a dataset: plan, split by patient, label, write shards and release files."""


for _kind in BUILD_KINDS:
    build.add_command(_build_command(_kind))


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sample", "sample_index", type=int, default=None, help="Also show sample I of a shard.")
def inspect(path: Path, sample_index: int | None) -> None:
    """Summarise a dataset folder (its manifest) or one shard (attributes, arrays, ids)."""
    from softmask_builder.formats.shards import open_shard

    if path.is_dir():
        from softmask_builder.dataset.release import check_release_index

        with _input_errors():
            m = check_release_index(path)
        _emit({k: m[k] for k in ("dataset", "dataset_version", "kind", "builder_version", "schema_version",
                                 "recipe_sha256", "n_samples", "n_planned", "n_rejects", "rejects_by_stage",
                                 "n_unselected", "splits")}
              | {k: m[k] for k in ("unselected_by_filter", "warnings") if k in m}
              | {"shards": [{k: e[k] for k in ("file", "split", "n_samples")} for e in m["shards"]]})
        return
    from softmask_builder.formats.shards import layout, optional_arrays

    with _input_errors(), open_shard(path) as shard:
        attrs = {k: v for k, v in shard.attrs.items() if k not in ("recipe_json", "rejects_json", "label_params_json")}
        ids = shard.sample_ids
        info = {
            "path": str(path), "attrs": attrs,
            "arrays": {name: {"shape": list(ds.shape), "dtype": _dtype_name(ds)} for name, ds in shard.file.items()},
            "n_samples": len(ids), "sample_ids": ids[:INSPECT_IDS], "n_rejects": len(shard.rejects()),
        }
        if len(ids) > INSPECT_IDS:
            info["sample_ids_note"] = f"first {INSPECT_IDS} of {len(ids)} sample ids (sample_id field: all of them)"
        if sample_index is not None:
            sample = shard.sample(sample_index)
            images = set(layout(shard.kind)[0]) | set(optional_arrays(shard.kind))
            info["sample"] = {k: (_image_summary(k, v) if k in images else
                                  v.tolist() if hasattr(v, "tolist") else v) for k, v in sample.items()}
    _emit(info)


#: Sample ids listed by `softmask inspect SHARD` (the count is always given).
INSPECT_IDS = 10


def _image_summary(name: str, image) -> dict:
    """What `inspect --sample` says of one image array: shape, dtype, range; the trimap's value
    counts; the Soft Mask's share of fractional (0 < alpha < 1) pixels."""
    import numpy as np

    out = {"shape": list(image.shape), "dtype": str(image.dtype), "min": float(image.min()), "max": float(image.max())}
    if name == "trimap":
        values, counts = np.unique(image, return_counts=True)
        out["counts"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
    elif name == "soft_mask":
        out["fraction_between_0_and_1"] = round(float(((image > 0) & (image < 1)).mean()), 4)
    return out


def _dtype_name(ds) -> str:
    import h5py

    return "str (variable-length UTF-8)" if h5py.check_string_dtype(ds.dtype) else str(ds.dtype)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(path: Path) -> None:
    """Re-hash a dataset folder and check its schema and counts (exit 3 on any mismatch)."""
    from softmask_builder.dataset.release import verify as verify_dataset

    from softmask_builder.cli.summaries import verify_line

    from softmask_builder.dataset.release import check_release_index

    with _input_errors():
        check_release_index(path)  # damaged manifest.json / SHA256SUMS: one line, exit 3
    report = verify_dataset(path)
    _emit(report.summary())
    if not report.ok:
        for problem in report.problems:
            click.echo(f"verify: {problem}", err=True)
    manifest = {}
    if report.ok:
        from softmask_builder.formats.release_folder import read_manifest

        manifest = read_manifest(path)
    _say(verify_line(report.summary(), manifest=manifest))
    if not report.ok:
        sys.exit(EXIT_VERIFY)


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--n", "n_samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples on the sheet (spread evenly over the dataset).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("preview.png"),
              show_default=True, help="PNG file to write (atomically).")
@click.option("--per-sample", "per_sample", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Volume builds: also write one three-plane PNG per drawn sample into this folder "
                   "(<sample_id>.png).")
def preview(path: Path, n_samples: int, out: Path, per_sample: Path | None) -> None:
    """Contact sheet PNG of N samples: the Soft Mask's 0.5 contour and the trimap band over the
    windowed CT, and the Soft Mask in a colormap with a zoomed inset of one edge. A volume build
    (kind volumes) gets one row per sample of three planes (axial, coronal, sagittal) through the
    nodule's centre, with the Soft Mask's 0.5 contour and the binary mask."""
    from softmask_builder.dataset.release import preview_report
    from softmask_builder.cli.summaries import preview_line
    from softmask_builder.formats.shards import open_shard
    from softmask_builder.reports.figures import shard_paths
    from softmask_builder.reports.preview3d import volume_preview_report, write_volume_previews

    with _input_errors(out):
        if path.is_dir():
            from softmask_builder.dataset.release import check_release_index

            check_release_index(path)
        with open_shard(shard_paths(path)[0]) as first:
            is_volume = first.kind == "volumes"
        if per_sample is not None and not is_volume:
            raise _Fail(f"--per-sample draws volume builds; {path} holds 2-D samples (the contact sheet has them all)")
        report = (volume_preview_report(path, out, n=n_samples) if is_volume
                  else preview_report(path, out, n=n_samples))
        if per_sample is not None:
            report["per_sample"] = write_volume_previews(path, per_sample, n=n_samples)["previews"]
    _emit(report)
    if report["n"] < n_samples:
        click.echo(f"preview: drew {report['n']} of the {n_samples} samples asked for (the dataset holds "
                   f"{report['n_available']})", err=True)
    _say(preview_line(report))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: PATH-report.html, beside the dataset folder).")
def report(path: Path, out: Path | None) -> None:
    """QC report: one self-contained HTML page (images embedded) with counts per split, a lesion-size
    histogram, the rejects and the samples to review first (largest unknown band, largest sure-lesion
    vs Soft Mask disagreement, smallest lesions) drawn with overlays."""
    from softmask_builder.reports.report import write_report

    out = out or path.with_name(f"{path.resolve().name}-report.html")
    with _input_errors():
        from softmask_builder.dataset.release import check_release_index

        check_release_index(path)
        summary = write_report(path, out)
    from softmask_builder.cli.summaries import report_line

    _emit(summary)
    _say(report_line(summary))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for DL_info.csv, Images_png/ and the truth (reused when it holds the same n and seed).")
@click.option("--n", "n_cases", type=click.IntRange(min=1), default=60, show_default=True, help="Phantom cases.")
@click.option("--seed", type=int, default=0, show_default=True, help="Phantom random seed (same seed, same bytes).")
@click.option("--kind", "phantom_kind", type=click.Choice(["hybrid", "analytic"]), default="hybrid", show_default=True,
              help="hybrid: real LIDC nodule shapes in synthetic (or --backgrounds) slices; analytic: the old "
                   "analytic shapes (softmask_builder.phantom).")
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Hybrid only: a LIDC DICOM root or a DeepLesion root whose slices take the lesions.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Parallel rendering jobs.")
def phantom(out: Path, n_cases: int, seed: int, phantom_kind: str, backgrounds: Path | None, jobs: int) -> None:
    """Write the synthetic DeepLesion-layout sample (known truth) to OUT."""
    from joblib import parallel_config

    from softmask_builder.cli.summaries import phantom_line

    with parallel_config(n_jobs=jobs):
        summary = _write_phantom(out, n_cases, seed, kind=phantom_kind, backgrounds=backgrounds)
    _emit(summary)
    _say(phantom_line(summary))


def _write_phantom(out: Path, n_cases: int, seed: int, *, kind: str = "hybrid",
                   backgrounds: Path | None = None) -> dict:
    from softmask_builder.phantom.cases import PHANTOM_VERSION
    from softmask_builder.phantom.deeplesion_writer import write_sample

    marker = out / "phantom.json"
    wanted = {"n": n_cases, "seed": seed, "builder_version": __version__, "phantom_version": PHANTOM_VERSION,
              "kind": kind, "backgrounds_dir": str(backgrounds) if backgrounds else None}
    if marker.is_file() and (out / "DL_info.csv").is_file():
        old = json.loads(marker.read_text())
        if {k: old.get(k) for k in wanted} == wanted:
            return {"out": str(out), **wanted, "reused": True}
    if kind == "analytic":
        with _input_errors(out):
            truth = write_sample(out, n=n_cases, seed=seed)
        record = {**wanted, "shapes": "analytic (softmask_builder.phantom)", "backgrounds": "synthetic"}
    else:
        from softmask_builder.phantom.hybrid import write_hybrid_sample
        from softmask_builder.phantom.backgrounds import load_backgrounds

        from softmask_builder.core.progress import progress

        # Loading the LIDC shapes takes seconds before the first case: say what is coming.
        click.echo(f"phantom: rendering {n_cases} hybrid cases into {out} (LIDC-IDRI nodule shapes load first)",
                   err=True)
        skipped: list = []
        with _input_errors(out), progress(n_cases, desc="phantom", unit="case") as bar:
            real = load_backgrounds(backgrounds, skipped=skipped) if backgrounds is not None else None
            info = write_hybrid_sample(out, n=n_cases, seed=seed, real_backgrounds=real, progress=bar.update)
        if skipped:
            click.echo(f"phantom: {len(skipped)} background row(s)/slice(s) skipped (first: "
                       f"{skipped[0]['background_id']}: {skipped[0]['reason']})", err=True)
        truth = info.pop("truth")
        if info["rejects"]:
            click.echo(f"phantom: {info['n_rejected']} case(s) could not be placed and were left out "
                       f"(first: {info['rejects'][0]['reason']})", err=True)
        record = {**wanted, **info}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(marker, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return {"out": str(out), **wanted, "truth": str(truth), "reused": False}


@main.command(name="make-lnsm3d")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("build/lnsm3d"),
              show_default=True, help="Output folder (the volume build; `make lnsm3d`'s default).")
@click.option("--n", "n_volumes", type=click.IntRange(min=1), default=24, show_default=True,
              help="3-D hybrid nodules to render.")
@click.option("--seed", type=int, default=0, show_default=True, help="Phantom random seed (same seed, same bytes).")
@click.option("--phantom-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the NIfTI pairs are written; default OUT-phantom-source, beside OUT.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Parallel shard jobs.")
@click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
              help=BACKEND_HELP)
@click.option("--overwrite", is_flag=True, help="Rebuild every shard (default: finished shards are kept).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a tty).")
def make_lnsm3d(out: Path, n_volumes: int, seed: int, phantom_source: Path | None, jobs: int, backend: str,
                overwrite: bool, progress: bool | None) -> None:
    """What `make lnsm3d` runs: the bundled 3-D sample, no external data. Writes N 3-D hybrid
    nodules as NIfTI image / mask (the readers' 50 % consensus) / truth files to OUT-phantom-source
    (reused when it holds the same N, seed and version), builds them as `softmask build masks
    --volumes --recipe lnsm3d` does (the truth travels as true_fraction), verifies OUT and writes
    the three-plane preview OUT-preview.png."""
    import time

    from softmask_builder.cli.summaries import nothing_built_error
    from softmask_builder.dataset.release import verify as verify_dataset
    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.phantom.nifti_volumes import MARKER, write_volume_sample
    from softmask_builder.reports.preview3d import volume_preview_report

    started = time.monotonic()
    source = phantom_source or out.with_name(f"{out.name}-phantom-source")
    summary: dict = {"phantom": {"out": str(source), "n": n_volumes, "seed": seed, "reused": False}}
    marker = source / MARKER
    old = json.loads(marker.read_text()) if marker.is_file() else {}
    if {k: old.get(k) for k in ("n", "seed", "builder_version")} == {"n": n_volumes, "seed": seed,
                                                                      "builder_version": __version__}:
        summary["phantom"]["reused"] = True
    else:
        from softmask_builder.core.progress import progress as progress_bar

        click.echo(f"lnsm3d: rendering {n_volumes} 3-D hybrid nodules into {source} (LIDC-IDRI nodule shapes load "
                   "first)", err=True)
        with _input_errors(source), progress_bar(n_volumes, desc="phantom3d", unit="volume", enabled=progress) as bar:
            old = write_volume_sample(source, n=n_volumes, seed=seed, progress=bar.update)
    summary["phantom"]["n_written"] = old.get("n_written")
    with _input_errors():
        recipe = load_recipe("lnsm3d")
    summary["build"] = _run_build(recipe, source, out, jobs=jobs, backend=backend, scheduler=None, dry_run=False,
                                  limit=None, overwrite=overwrite, progress=progress)
    report = verify_dataset(out)
    summary["verify"] = report.summary()
    if summary["build"]["n_samples"]:
        with _input_errors(out):
            summary["preview"] = volume_preview_report(out, out.with_name(f"{out.name}-preview.png"), n=4)["preview"]
    _emit(summary)
    _echo_warnings(summary["build"])
    if not report.ok:
        for problem in report.problems:
            click.echo(f"verify: {problem}", err=True)
        sys.exit(EXIT_VERIFY)
    if summary["build"]["n_samples"] == 0:
        raise _Fail(nothing_built_error(summary["build"]), code=EXIT_EMPTY)
    b = summary["build"]
    _say(f"built {b['n_samples']} volumes of lnsm3d into {out} ({b['n_rejects']} rejects), verified OK, preview "
         f"{summary['preview']}, in {time.monotonic() - started:.0f} s; next: softmask export nnunet {out} or "
         f"softmask report {out}.")


@main.command(name="make-lnsm")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("build/lnsm"),
              show_default=True, help="Output folder (the dataset; `make lnsm`'s default).")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Parallel shard jobs.")
@click.option("--deeplesion", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="DeepLesion root (DL_info.csv + Images_png). Without it, the bundled phantom sample is built.")
@click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
              help=BACKEND_HELP)
@click.option("--scheduler", default=None,
              help="dask scheduler address (tcp://host:8786, with --backend dask); default: a LocalCluster of "
                   "--jobs workers.")
@click.option("--n", "n_cases", type=click.IntRange(min=1), default=60, show_default=True,
              help="Phantom cases (without --deeplesion).")
@click.option("--seed", type=int, default=0, show_default=True, help="Phantom random seed (without --deeplesion).")
@click.option("--phantom-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the phantom sample is written (without --deeplesion); default OUT-phantom-source, "
                   "beside OUT, so that OUT holds only what SHA256SUMS covers.")
@click.option("--preview", "preview_png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Contact sheet PNG; default OUT-preview.png, beside OUT.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N planned samples (by sample_id): a trial build.")
@click.option("--overwrite", is_flag=True, help="Rebuild every shard (default: finished shards are kept).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a tty).")
@click.option("--phantom", "phantom_kind", type=click.Choice(["hybrid", "analytic"]), default="hybrid",
              show_default=True, help="Without --deeplesion: which phantom makes the sample.")
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Hybrid sample only: LIDC DICOM or DeepLesion root whose slices take the lesions.")
def make_lnsm(out: Path, jobs: int, deeplesion: Path | None, backend: str, scheduler: str | None, n_cases: int,
              seed: int, phantom_source: Path | None, preview_png: Path | None, limit: int | None, overwrite: bool,
              progress: bool | None, phantom_kind: str, backgrounds: Path | None) -> None:
    """What `make lnsm` runs: build LNSM from DeepLesion (manifests/lnsm.yaml), or without
    --deeplesion the phantom sample (written to OUT-phantom-source; --phantom hybrid:
    manifests/sample.yaml, analytic: manifests/sample_analytic.yaml); then verify and write
    OUT-preview.png. OUT itself holds only the files SHA256SUMS covers."""
    import time

    from softmask_builder.formats.recipes import load_recipe
    from softmask_builder.dataset.release import verify as verify_dataset
    from softmask_builder.dataset.release import write_preview
    from softmask_builder.cli.summaries import make_lnsm_line, nothing_built_error

    started = time.monotonic()
    summary: dict = {}
    if deeplesion is None:
        from joblib import parallel_config

        phantom_source = phantom_source or out.with_name(f"{out.name}-phantom-source")
        with parallel_config(n_jobs=jobs):
            summary["phantom"] = _write_phantom(phantom_source, n_cases, seed, kind=phantom_kind,
                                                backgrounds=backgrounds)
        source, recipe_name = phantom_source, ("sample" if phantom_kind == "hybrid" else "sample_analytic")
    else:
        source, recipe_name = deeplesion, "lnsm"
        summary["deeplesion"] = str(deeplesion)
    with _input_errors():
        recipe = load_recipe(recipe_name)
    summary["build"] = _run_build(recipe, source, out, jobs=jobs, backend=backend, scheduler=scheduler,
                                  dry_run=False, limit=limit, overwrite=overwrite, progress=progress)
    report = verify_dataset(out)
    summary["verify"] = report.summary()
    if summary["build"]["n_samples"]:
        summary["preview"] = str(write_preview(out, preview_png or out.with_name(f"{out.name}-preview.png"), n=8))
    _emit(summary)
    _echo_warnings(summary["build"])
    _say(make_lnsm_line(summary, seconds=time.monotonic() - started))
    if not report.ok:
        for problem in report.problems:
            click.echo(f"verify: {problem}", err=True)
        sys.exit(EXIT_VERIFY)
    if summary["build"]["n_samples"] == 0:
        raise _Fail(nothing_built_error(summary["build"]), code=EXIT_EMPTY)


@main.group()
def export() -> None:
    """Hand a verified build to other tools (nnU-Net v2, MONAI); needs the `export` extra."""


@contextmanager
def _export_errors():
    """Export errors -> their exit code (2 input, 3 the build fails verify, 4 nothing to export)."""
    from softmask_builder.export import BuildNotVerified, ExportError

    try:
        yield
    except BuildNotVerified as exc:
        for problem in exc.problems:
            click.echo(f"verify: {problem}", err=True)
        raise _Fail(str(exc), code=EXIT_VERIFY) from None
    except ExportError as exc:
        raise _Fail(str(exc), code=exc.exit_code) from None
    except SoftMaskError as exc:
        raise _Fail(str(exc)) from None


@export.command(name="nnunet")
@click.argument("build_dir", metavar="BUILD", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999): DatasetNNN_NAME.")
@click.option("--name", default="LNSM", show_default=True, help="nnU-Net dataset name (letters, digits, - _).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="nnU-Net raw folder (nnUNet_raw); DatasetNNN_NAME is written inside.")
@click.option("--band-as-ignore", is_flag=True, help="Label the trimap's unknown band as nnU-Net's ignore label 2.")
@click.option("--splits-final", is_flag=True,
              help="Also write PREPROCESSED/DatasetNNN_NAME/splits_final.json: one fold, our train/val split.")
@click.option("--preprocessed", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="nnU-Net preprocessed folder (nnUNet_preprocessed), with --splits-final.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
def export_nnunet_command(build_dir: Path, dataset_id: int, name: str, out: Path, band_as_ignore: bool,
                          splits_final: bool, preprocessed: Path | None, overwrite: bool) -> None:
    """Export BUILD as an nnU-Net v2 raw dataset (binary labels: nnU-Net has no soft labels)."""
    from softmask_builder.dataset.release import check_release_index
    from softmask_builder.export import export_nnunet

    with _input_errors():
        check_release_index(build_dir)
    with _export_errors():
        result = export_nnunet(build_dir, out, dataset_id=dataset_id, name=name, band_as_ignore=band_as_ignore,
                               splits_final=splits_final, preprocessed=preprocessed, overwrite=overwrite)
    from softmask_builder.cli.summaries import export_nnunet_line

    _emit(result.summary())
    _say(export_nnunet_line(result.summary()))


@export.command(name="monai")
@click.argument("build_dir", metavar="BUILD", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (NIfTI files + datalist.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
def export_monai_command(build_dir: Path, out: Path, overwrite: bool) -> None:
    """Export BUILD as NIfTI files + a MONAI datalist (image, label, soft_label)."""
    from softmask_builder.dataset.release import check_release_index
    from softmask_builder.export import export_monai

    with _input_errors():
        check_release_index(build_dir)
    with _export_errors():
        result = export_monai(build_dir, out, overwrite=overwrite)
    from softmask_builder.cli.summaries import export_monai_line

    _emit(result.summary())
    _say(export_monai_line(result.summary()))


from softmask_builder.cli.lidc import lidc_agreement  # noqa: E402  (registered after main exists)

main.add_command(lidc_agreement)


if __name__ == "__main__":  # pragma: no cover
    main()

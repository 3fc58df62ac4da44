"""`mltrail conformance`: run the conformance suite against a store URL."""

from __future__ import annotations

import sys

import click

from mltrail.conformance import SUITE_VERSION


@click.command("conformance")
@click.argument("url", required=False)
@click.option("--list", "list_only", is_flag=True,
              help="List the cases without running them.")
@click.option("--junit-xml", metavar="PATH", help="Also write a JUnit XML report to PATH.")
@click.option("--json", "json_report", metavar="PATH",
              help="Also write a JSON report (suite version, counts, every case) to PATH.")
@click.option("-k", "select", metavar="EXPR",
              help="Run only the cases whose names match this pytest -k expression.")
@click.pass_context
def conformance_command(ctx: click.Context, url: str | None, list_only: bool,
                        junit_xml: str | None, json_report: str | None,
                        select: str | None) -> None:
    """Run the conformance suite against the backend of URL.

    URL defaults to the global --store. Every case gets a fresh, empty store
    from the backend's harness. The report groups cases by area, names the
    suite version and ends with a line `N passed, N failed, N skipped`; the
    exit code is non-zero when any case fails.
    """
    from mltrail.conformance.harness import harness_for_url
    from mltrail.conformance.runner import run
    from mltrail.registry import resolve_url

    state = ctx.obj
    target = url or resolve_url(getattr(state, "store_url", None))
    # Fail once with the backend's own message rather than once per case.
    harness_for_url(target)
    quiet = bool(getattr(state, "quiet", False))
    if not quiet and not list_only:
        click.echo(f"mltrail conformance suite {SUITE_VERSION} against {target}", err=True)
    code = run(target, junit_xml=junit_xml, json_report=json_report, list_only=list_only,
               select=select, quiet=quiet)
    sys.stdout.flush()
    ctx.exit(code)

"""The audit as people read it: one line per check (PASS/FAIL with counts), then each violation
with its code and where to look, then the dead letters by reason and component."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from streamrl.audit.report import AuditReport

MAX_SHOWN = 50  # violations printed per check; the JSON report has them all


def print_report(report: AuditReport, console: Console) -> None:
    table = Table(title=f"audit of run {report.run_id} ({report.log_url})", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("check")
    for col in ("checked", "violations"):
        table.add_column(col, no_wrap=True, justify="right")
    for check in report.checks:
        mark = "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]"
        table.add_row(mark, check.title, str(check.num_checked),
                      str(len(check.violations)) if check.violations else "-")
    console.print(table)
    for check in report.checks:
        for note in check.notes:
            console.print(f"[dim]{check.name}: {note}[/dim]", highlight=False)
    for check in report.checks:
        for v in check.violations[:MAX_SHOWN]:
            console.print(f"[red]{v.code}[/red] at [bold]{v.where}[/bold]: {v.message}",
                          highlight=False)
        if len(check.violations) > MAX_SHOWN:
            console.print(f"... and {len(check.violations) - MAX_SHOWN} more {check.name} "
                          f"violations (see --json)")
    if report.dead_letters:
        letters = ", ".join(f"{d.count} {d.reason_code} from {d.component}"
                            for d in report.dead_letters)
        console.print(f"dead letters (reported, not violations): {letters}", highlight=False)
    else:
        console.print("dead letters: none")
    verdict = ("[green]OK[/green]: no violations" if report.ok
               else f"[red]FAILED[/red]: {len(report.violations)} violations")
    console.print(f"{verdict} ({report.duration_s:.2f} s)")

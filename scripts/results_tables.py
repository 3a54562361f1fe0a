"""The protocol's tables in docs/results.md, written from the committed sweep reports in docs/sweeps/.

    cp runs/sweeps/<sweep>/eval_final_<settings>.json docs/sweeps/<sweep>.json   # keep a sweep's report
    python scripts/results_tables.py                                            # refresh docs/results.md

A table `<!-- table:NAME -->` ... `<!-- /table:NAME -->` in docs/results.md holds the rows of the experiments
named NAME_* (state_transfer: state_transfer_imf, state_transfer_ddim) from every report in docs/sweeps/, and
their paired differences; `<!-- table:NAME from:GLOB,GLOB -->` takes only the reports whose file names match (a
recipe's current sweep apart from an earlier version's); a table no report covers yet is left as it is.
"""
import fnmatch
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roboimi.evaluation.sweeps import render_report  # noqa: E402

RESULTS = ROOT / "docs" / "results.md"
REPORTS = ROOT / "docs" / "sweeps"
TABLE = re.compile(r"<!-- table:(\w+)( from:[\w*.,-]+)? -->\n(.*?)<!-- /table:\1 -->", flags=re.S)


def setting_report(report: dict, setting: str) -> dict | None:
    """`report` narrowed to the experiments `<setting>_*`, or None when it has none of them."""
    def ours(experiment: str) -> bool:
        return experiment.startswith(f"{setting}_")

    rows = [row for row in report["rows"] if ours(row["experiment"])]
    if not rows:
        return None
    comparisons = [c for c in report["comparisons"] if ours(c["a"][0]) and ours(c["b"][0])]
    return {**report, "rows": rows, "comparisons": comparisons, "skipped": []}


def rendered(results: str) -> str:
    """docs/results.md's text with every table some report covers written from the reports."""
    reports = {path.name: json.loads(path.read_text()) for path in sorted(REPORTS.glob("*.json"))}

    def fill(match: re.Match) -> str:
        setting, source, old_body = match.groups()
        patterns = source[len(" from:"):].split(",") if source else ["*"]
        chosen = [report for name, report in reports.items() if any(fnmatch.fnmatch(name, p) for p in patterns)]
        parts = [render_report(narrowed) for report in chosen if (narrowed := setting_report(report, setting))]
        body = "\n\n".join(parts) + "\n" if parts else old_body
        return f"<!-- table:{setting}{source or ''} -->\n{body}<!-- /table:{setting} -->"

    return TABLE.sub(fill, results)


if __name__ == "__main__":
    RESULTS.write_text(rendered(RESULTS.read_text()))
    print(f"{RESULTS}: tables from {', '.join(p.name for p in sorted(REPORTS.glob('*.json'))) or 'no reports yet'}")

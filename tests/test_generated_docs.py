"""The generated parts of the docs are current: policies/README.md's table from what the shipped files and their
scores record, docs/results.md's protocol tables from the committed sweep reports."""
import re
import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PolicyCardsTest(unittest.TestCase):
    def test_the_readme_table_is_the_one_the_records_give(self):
        generated = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "policy_cards.py"), "table"], capture_output=True, text=True, check=True
        ).stdout.strip()
        readme = (ROOT / "policies" / "README.md").read_text()
        written = re.search(r"<!-- policy-table -->\n(.*?)\n?<!-- /policy-table -->", readme, flags=re.S).group(1).strip()
        self.assertEqual(written, generated, "policies/README.md is stale: run `python scripts/policy_cards.py write`")
        for policy in sorted((ROOT / "policies").glob("*.pt")):
            self.assertIn(f"`{policy.name}`", generated)


class ResultsTablesTest(unittest.TestCase):
    def test_the_results_tables_are_the_ones_the_sweep_reports_give(self):
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            from results_tables import RESULTS, rendered
        finally:
            sys.path.remove(str(ROOT / "scripts"))
        text = RESULTS.read_text()
        self.assertEqual(rendered(text), text, "docs/results.md is stale: run `python scripts/results_tables.py`")


if __name__ == "__main__":
    unittest.main()

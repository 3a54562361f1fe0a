"""The generated parts of the docs are current: policies/README.md's table from what the shipped files and their
scores record, docs/results.md's protocol tables from the committed sweep reports."""
import json
import re
import subprocess
import sys
import tempfile
import unittest
from unittest import mock
from pathlib import Path

from tests.script_modules import load_script

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
        tables = load_script("scripts/results_tables.py")
        text = tables.RESULTS.read_text()
        self.assertEqual(tables.rendered(text), text, "docs/results.md is stale: run `python scripts/results_tables.py`")

    def test_a_table_can_take_only_the_reports_it_names(self):
        tables = load_script("scripts/results_tables.py")
        report = json.loads((tables.REPORTS / "state.json").read_text())
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(tables, "REPORTS", Path(tmp)):
            (Path(tmp) / "old.json").write_text(json.dumps(report))
            (Path(tmp) / "new.json").write_text(json.dumps({**report, "sweep_dir": "runs/sweeps/new"}))
            text = tables.rendered(
                "<!-- table:state_insertion from:new* -->\n<!-- /table:state_insertion -->\n"
                "<!-- table:state_insertion -->\n<!-- /table:state_insertion -->\n"
            )
        current, every = text.split("<!-- /table:state_insertion -->")[:2]
        self.assertIn("runs/sweeps/new", current)
        self.assertNotIn("runs/sweeps/state", current)
        self.assertIn("runs/sweeps/new", every)
        self.assertIn("runs/sweeps/state", every)
        self.assertIn("<!-- table:state_insertion from:new* -->", text)


if __name__ == "__main__":
    unittest.main()

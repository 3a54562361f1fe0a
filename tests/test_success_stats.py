"""Success-rate statistics: Wilson against published values and its defining equation, its coverage, Newcombe's
paired interval against a published example, aggregation over training seeds, and the report format."""
import math
import statistics
import unittest

import numpy as np

from roboimi.evaluation.success_stats import aggregate_runs, format_rate, paired_difference, wilson_interval

Z95 = statistics.NormalDist().inv_cdf(0.975)


def wilson_by_quadratic(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Reference Wilson limits: the roots in p of (p - x/n)^2 = z^2 p (1 - p) / n, solved as a quadratic."""
    p_hat = successes / n
    a = 1.0 + z * z / n
    b = -(2.0 * p_hat + z * z / n)
    c = p_hat * p_hat
    root = math.sqrt(b * b - 4.0 * a * c)
    return (-b - root) / (2.0 * a), (-b + root) / (2.0 * a)


def episodes(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Outcome lists of two policies with the given 2x2 table of paired episodes."""
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


class WilsonIntervalTest(unittest.TestCase):
    def test_published_values(self):
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II, method 3.
        published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                     (1, 29): (0.0061, 0.1718)}
        # Values commonly quoted for evaluation-sized samples.
        published |= {(0, 10): (0.0, 0.2775), (0, 50): (0.0, 0.0713), (25, 50): (0.3664, 0.6336),
                      (48, 50): (0.8654, 0.9890)}
        for (successes, n), (low, high) in published.items():
            with self.subTest(successes=successes, n=n):
                got = wilson_interval(successes, n)
                self.assertAlmostEqual(got[0], low, delta=6e-5)
                self.assertAlmostEqual(got[1], high, delta=6e-5)
                reference = wilson_by_quadratic(successes, n)
                self.assertAlmostEqual(reference[0], low, delta=6e-5)
                self.assertAlmostEqual(reference[1], high, delta=6e-5)

    def test_solves_the_score_equation_for_every_count(self):
        for confidence in (0.8, 0.95, 0.99):
            z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
            for n in (1, 2, 7, 20, 50):
                for successes in range(n + 1):
                    with self.subTest(confidence=confidence, n=n, successes=successes):
                        got = wilson_interval(successes, n, confidence)
                        reference = wilson_by_quadratic(successes, n, z)
                        self.assertAlmostEqual(got[0], reference[0], places=12)
                        self.assertAlmostEqual(got[1], reference[1], places=12)

    def test_extremes_are_exact_and_limits_bracket_the_rate(self):
        for n in (1, 10, 50, 1000):
            self.assertEqual(wilson_interval(0, n)[0], 0.0)
            self.assertEqual(wilson_interval(n, n)[1], 1.0)
            self.assertGreater(wilson_interval(0, n)[1], 0.0)
            self.assertLess(wilson_interval(n, n)[0], 1.0)
            for successes in range(n + 1):
                low, high = wilson_interval(successes, n)
                self.assertTrue(0.0 <= low <= successes / n <= high <= 1.0)

    def test_mirror_symmetry(self):
        for successes in range(51):
            low, high = wilson_interval(successes, 50)
            mirrored_low, mirrored_high = wilson_interval(50 - successes, 50)
            self.assertAlmostEqual(low, 1.0 - mirrored_high, places=12)
            self.assertAlmostEqual(high, 1.0 - mirrored_low, places=12)

    def test_monotone_in_successes_samples_and_confidence(self):
        limits = [wilson_interval(successes, 50) for successes in range(51)]
        for previous, current in zip(limits, limits[1:]):
            self.assertLess(previous[0], current[0])
            self.assertLess(previous[1], current[1])
        # The same 80 % rate is known more precisely from more episodes.
        widths = [high - low for low, high in (wilson_interval(4 * k, 5 * k) for k in (2, 10, 50, 250))]
        self.assertEqual(widths, sorted(widths, reverse=True))
        nested = [wilson_interval(40, 50, confidence) for confidence in (0.5, 0.8, 0.95, 0.99)]
        for inner, outer in zip(nested, nested[1:]):
            self.assertLess(outer[0], inner[0])
            self.assertGreater(outer[1], inner[1])

    def test_monte_carlo_coverage_beats_wald_near_high_rates(self):
        p, n = 0.9, 50
        counts = np.random.default_rng(0).binomial(n, p, size=4000)
        wilson = np.array([wilson_interval(x, n) for x in range(n + 1)])
        p_hat = np.arange(n + 1) / n
        wald_half = Z95 * np.sqrt(p_hat * (1 - p_hat) / n)
        wilson_coverage = np.mean((wilson[counts, 0] <= p) & (p <= wilson[counts, 1]))
        wald_coverage = np.mean((p_hat[counts] - wald_half[counts] <= p) & (p <= p_hat[counts] + wald_half[counts]))
        # Exact coverages at p = 0.9, n = 50: Wilson 0.970, Wald 0.879; 4000 draws have a standard error of ~0.005.
        self.assertGreater(wilson_coverage, 0.94)
        self.assertLess(wilson_coverage, 0.99)
        self.assertLess(wald_coverage, 0.91)

    def test_bad_input_names_the_argument(self):
        for args, name in (((0, 0), "n"), ((1, -3), "n"), ((-1, 10), "successes"), ((11, 10), "successes")):
            with self.subTest(args=args), self.assertRaisesRegex(ValueError, name):
                wilson_interval(*args)
        for confidence in (0.0, 1.0, 1.5, -0.5):
            with self.subTest(confidence=confidence), self.assertRaisesRegex(ValueError, "confidence"):
                wilson_interval(5, 10, confidence)


class PairedDifferenceTest(unittest.TestCase):
    def test_counts_and_difference(self):
        a = [True, True, False, False, True, False]
        b = [True, False, True, False, True, True]
        result = paired_difference(a, b)
        self.assertEqual(
            {key: result[key] for key in ("a_only", "b_only", "both", "neither", "n")},
            {"a_only": 1, "b_only": 2, "both": 2, "neither": 1, "n": 6},
        )
        self.assertAlmostEqual(result["difference"], 3 / 6 - 4 / 6)
        low, high = result["interval"]
        self.assertTrue(-1.0 <= low <= result["difference"] <= high <= 1.0)

    def test_published_example(self):
        # Cavo et al. (2012), complete response before / after consolidation therapy, as analysed in Fagerland,
        # Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8: Newcombe square-and-add
        # interval -0.0621 (95 % CI -0.1186 to -0.0046).
        result = paired_difference(*episodes(both=59, a_only=6, b_only=16, neither=80))
        self.assertAlmostEqual(result["difference"], -0.0621, places=4)
        self.assertAlmostEqual(result["interval"][0], -0.1186, places=4)
        self.assertAlmostEqual(result["interval"][1], -0.0046, places=4)

    def test_independent_when_a_margin_is_empty(self):
        # b always succeeds: phi is undefined and taken as 0, leaving Newcombe's square-and-add of the Wilson errors.
        a, b = episodes(both=30, a_only=0, b_only=20, neither=0)
        low1, high1 = wilson_by_quadratic(30, 50)
        low2, high2 = wilson_by_quadratic(50, 50)
        result = paired_difference(a, b)
        self.assertAlmostEqual(result["interval"][0], -0.4 - math.hypot(0.6 - low1, high2 - 1.0), places=10)
        self.assertAlmostEqual(result["interval"][1], -0.4 + math.hypot(high1 - 0.6, 1.0 - low2), places=10)

    def test_identical_policies_have_an_interval_around_zero(self):
        for successes in (0, 1, 25, 45, 50):
            with self.subTest(successes=successes):
                outcomes = [True] * successes + [False] * (50 - successes)
                result = paired_difference(outcomes, list(outcomes))
                self.assertEqual(result["difference"], 0.0)
                low, high = result["interval"]
                self.assertLessEqual(low, 0.0)
                self.assertGreaterEqual(high, 0.0)
                if 0 < successes < 50:
                    # 50 episodes cannot prove two policies equal: the interval keeps a width.
                    self.assertGreater(high - low, 0.01)

    def test_swapping_the_policies_negates_the_interval(self):
        a, b = episodes(both=20, a_only=9, b_only=3, neither=18)
        forward, backward = paired_difference(a, b), paired_difference(b, a)
        self.assertAlmostEqual(forward["difference"], -backward["difference"])
        self.assertAlmostEqual(forward["interval"][0], -backward["interval"][1], places=12)
        self.assertAlmostEqual(forward["interval"][1], -backward["interval"][0], places=12)
        self.assertEqual((forward["a_only"], forward["b_only"]), (backward["b_only"], backward["a_only"]))

    def test_pairing_narrows_the_interval(self):
        # Same marginal rates (36 / 50 vs 30 / 50); concordant episodes make the difference better determined.
        concordant = paired_difference(*episodes(both=30, a_only=6, b_only=0, neither=14))
        mixed = paired_difference(*episodes(both=22, a_only=14, b_only=8, neither=6))
        self.assertAlmostEqual(concordant["difference"], mixed["difference"])
        self.assertLess(
            concordant["interval"][1] - concordant["interval"][0], mixed["interval"][1] - mixed["interval"][0]
        )
        self.assertGreater(concordant["interval"][0], 0.0)  # a is better, which the unpaired view cannot show
        self.assertLess(mixed["interval"][0], 0.0)

    def test_more_wins_move_the_interval_up(self):
        lows, highs = [], []
        for a_only in range(0, 11):
            low, high = paired_difference(*episodes(both=20, a_only=a_only, b_only=10 - a_only, neither=20))["interval"]
            lows.append(low)
            highs.append(high)
        self.assertEqual(lows, sorted(lows))
        self.assertEqual(highs, sorted(highs))
        self.assertLess(highs[0], 0.0)
        self.assertGreater(lows[-1], 0.0)

    def test_limits_are_clipped(self):
        for n in (1, 3, 20):
            with self.subTest(n=n):
                self.assertEqual(paired_difference([True] * n, [False] * n)["interval"][1], 1.0)
                self.assertEqual(paired_difference([False] * n, [True] * n)["interval"][0], -1.0)
                low, high = paired_difference([True] * n, [False] * n)["interval"]
                self.assertTrue(-1.0 <= low < 1.0)

    def test_accepts_numpy_arrays(self):
        a, b = episodes(both=10, a_only=3, b_only=1, neither=6)
        self.assertEqual(paired_difference(np.array(a), np.array(b)), paired_difference(a, b))

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "length"):
            paired_difference([True, False], [True])
        with self.assertRaisesRegex(ValueError, "empty"):
            paired_difference([], [])


class AggregateRunsTest(unittest.TestCase):
    def test_hand_made_example(self):
        runs = {
            "seed 0": [True] * 8 + [False] * 2,
            "seed 1": [True] * 6 + [False] * 4,
            "seed 2": [True] * 10,
        }
        summary = aggregate_runs(runs)
        self.assertEqual(list(summary["runs"]), ["seed 0", "seed 1", "seed 2"])
        self.assertEqual(summary["runs"]["seed 1"]["successes"], 6)
        self.assertEqual(summary["runs"]["seed 1"]["n"], 10)
        self.assertAlmostEqual(summary["runs"]["seed 1"]["rate"], 0.6)
        self.assertEqual(summary["runs"]["seed 2"]["interval"], wilson_interval(10, 10))
        self.assertAlmostEqual(summary["mean"], 0.8)
        # Deviations 0, -0.2, 0.2 over n - 1 = 2 degrees of freedom.
        self.assertAlmostEqual(summary["std"], 0.2)
        self.assertAlmostEqual(summary["min"], 0.6)
        self.assertAlmostEqual(summary["max"], 1.0)
        self.assertEqual(summary["pooled"]["successes"], 24)
        self.assertEqual(summary["pooled"]["n"], 30)
        self.assertAlmostEqual(summary["pooled"]["rate"], 0.8)
        low, high = summary["pooled"]["interval"]
        self.assertAlmostEqual(low, wilson_by_quadratic(24, 30)[0], places=12)
        self.assertAlmostEqual(high, wilson_by_quadratic(24, 30)[1], places=12)
        # The pooled interval only sees episode noise: narrower than the spread between seeds.
        self.assertGreater(low, summary["min"])

    def test_single_run_has_zero_std(self):
        summary = aggregate_runs({"seed 0": [True, False, True, True]})
        self.assertEqual(summary["std"], 0.0)
        self.assertEqual(summary["mean"], 0.75)
        self.assertEqual(summary["pooled"], summary["runs"]["seed 0"])

    def test_confidence_is_passed_on(self):
        summary = aggregate_runs({"a": [True, False] * 5, "b": [True] * 10}, confidence=0.8)
        self.assertEqual(summary["runs"]["a"]["interval"], wilson_interval(5, 10, 0.8))
        self.assertEqual(summary["pooled"]["interval"], wilson_interval(15, 20, 0.8))

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "empty"):
            aggregate_runs({})
        with self.assertRaisesRegex(ValueError, "same episodes"):
            aggregate_runs({"seed 0": [True] * 10, "seed 1": [True] * 9})
        with self.assertRaisesRegex(ValueError, "n must"):
            aggregate_runs({"seed 0": []})


class FormatRateTest(unittest.TestCase):
    def test_report_line(self):
        # 48 / 50: Wilson (0.8654, 0.9890).
        self.assertEqual(format_rate(48, 50), "48 / 50 (96 %, 95 % CI 86-99 %)")
        self.assertEqual(format_rate(0, 10), "0 / 10 (0 %, 95 % CI 0-28 %)")
        self.assertEqual(format_rate(50, 50), "50 / 50 (100 %, 95 % CI 92-100 %)")
        self.assertEqual(format_rate(25, 50, 0.9), "25 / 50 (50 %, 90 % CI 38-62 %)")
        self.assertEqual(format_rate(40, 50, 0.995), "40 / 50 (80 %, 99.5 % CI 60-92 %)")

    def test_rate_rounds_half_up(self):
        self.assertTrue(format_rate(1, 8).startswith("1 / 8 (13 %, "))
        self.assertTrue(format_rate(3, 8).startswith("3 / 8 (38 %, "))

    def test_printed_interval_contains_the_computed_one(self):
        for n in (8, 29, 50):
            for successes in range(n + 1):
                with self.subTest(n=n, successes=successes):
                    low, high = wilson_interval(successes, n)
                    printed = format_rate(successes, n).split("CI ")[1].rstrip(" %)")
                    printed_low, printed_high = (int(part) for part in printed.split("-"))
                    self.assertLessEqual(printed_low, low * 100)
                    self.assertGreaterEqual(printed_high, high * 100)
                    self.assertLess(low * 100 - printed_low, 1.0)
                    self.assertLess(printed_high - high * 100, 1.0)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "successes"):
            format_rate(51, 50)


if __name__ == "__main__":
    unittest.main()

"""Unit tests of the harness's pure logic: `/usr/bin/python3 -m unittest discover -s bench/tests`."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dbmuxbench import harness  # noqa: E402
from dbmuxbench.harness import CorrectnessError, Figure, Result, Target  # noqa: E402
from dbmuxbench.engines import describe_diff  # noqa: E402
from dbmuxbench.scenarios.soak import rss_verdict  # noqa: E402
from dbmuxbench.workload import parse_sysbench  # noqa: E402


class Numbers(unittest.TestCase):
    def test_percentile_nearest_rank(self):
        v = list(range(1, 101))
        self.assertEqual(harness.percentile(v, 50), 50)
        self.assertEqual(harness.percentile(v, 99), 99)
        self.assertEqual(harness.percentile(v, 100), 100)
        self.assertEqual(harness.percentile([7.0], 99), 7.0)
        with self.assertRaises(ValueError):
            harness.percentile([], 50)

    def test_durations(self):
        self.assertEqual(harness.parse_duration("30m"), 1800)
        self.assertEqual(harness.parse_duration("90"), 90)
        self.assertEqual(harness.parse_duration("1h30m"), 5400)
        for bad in ("", "10x", "m", "0s"):
            with self.assertRaises(ValueError):
                harness.parse_duration(bad)

    def test_rate_series(self):
        samples = [(0.0, 0.0), (0.5, 50.0), (1.0, 100.0), (1.5, 150.0), (2.0, 150.0)]
        rates = harness.rate_series(samples, window=1.0)
        self.assertAlmostEqual(rates[1][1], 100.0)
        self.assertAlmostEqual(rates[-1][1], 50.0)


class Targets(unittest.TestCase):
    def test_ratio_and_value_targets(self):
        f = Figure("x", 90.0, baseline=100.0, target=Target(">=", 0.9))
        self.assertAlmostEqual(f.ratio, 0.9)
        self.assertTrue(f.target.met(f))
        f.dbmux = 89.0
        self.assertFalse(f.target.met(f))
        v = Figure("p99", 12.0, target=Target("<=", 10.0, on="value"))
        self.assertFalse(v.target.met(v))
        self.assertIsNone(Figure("y", 1.0, target=Target(">=", 1.0)).target.met(Figure("y", 1.0)))

    def test_failed_check_raises_and_marks_the_result(self):
        r = Result("s", "t", 1)
        r.check(True, "fine")
        with self.assertRaises(CorrectnessError):
            r.check(False, "rows missing")
        self.assertFalse(r.check_ok)

    def test_table_shows_failures(self):
        r = Result("s", "t", 1)
        r.figure("rate", 50.0, "rows/s", 100.0, "base", Target(">=", 1.0))
        r.check_ok = False
        text = harness.table([r])
        self.assertIn("0.50×", text)
        self.assertIn("**no**", text)
        self.assertIn("FAILED", text)


class Repeats(unittest.TestCase):
    def test_median_of_runs_and_any_failed_check_fails(self):
        runs = []
        for v, ok in ((10.0, True), (30.0, True), (20.0, False)):
            r = Result("s", "t", 1)
            r.figure("rate", v, "rows/s", 2 * v, "base", Target(">=", 1.0))
            r.check_ok = ok
            runs.append(r)
        m = harness.median_result(runs)
        self.assertEqual(m.figures[0].dbmux, 20.0)
        self.assertEqual(m.figures[0].baseline, 40.0)
        self.assertFalse(m.check_ok)
        self.assertEqual(len(m.metrics["runs"]), 3)
        runs[2].check_ok = True
        self.assertTrue(harness.median_result(runs).check_ok)


class Parsing(unittest.TestCase):
    def test_sysbench_output(self):
        out = """
SQL statistics:
    queries performed:
        read:                            0
        write:                           4000
        other:                           2000
        total:                           6000
    transactions:                        1000   (99.84 per sec.)
    queries:                             6000   (599.07 per sec.)
    ignored errors:                      2      (0.20 per sec.)
General statistics:
    total time:                          10.0158s
"""
        r = parse_sysbench(out)
        self.assertEqual(r["transactions"], 1000)
        self.assertAlmostEqual(r["transactions_per_s"], 99.84)
        self.assertEqual(r["errors"], 2)
        self.assertEqual(r["writes"], 4000)
        self.assertAlmostEqual(r["seconds"], 10.0158)

    def test_diff_names_missing_rows(self):
        text = describe_diff({"1": "a", "2": "b", "3": "c"}, {"1": "a", "3": "x", "4": "d"})
        self.assertIn("1 rows missing (keys 2)", text)
        self.assertIn("1 extra (4)", text)
        self.assertIn("1 differ (3)", text)


class Metrics(unittest.TestCase):
    def test_progress_from_the_gauges(self):
        from dbmuxbench.process import parse_metrics

        text = """# HELP dbmux_log_last_seq x
# TYPE dbmux_log_last_seq gauge
dbmux_log_last_seq 1234
dbmux_capture_connected 1
dbmux_apply_last_seq{replica="mariadb"} 1200
dbmux_apply_last_seq{replica="postgres"} 1100
dbmux_apply_lag_events{replica="postgres"} 134
"""
        s = parse_metrics(text)
        self.assertEqual(s["log"]["last_seq"], 1234)
        self.assertTrue(s["capture"]["connected"])
        self.assertEqual(s["replicas"], {"mariadb": {"applied_seq": 1200}, "postgres": {"applied_seq": 1100}})
        self.assertEqual(parse_metrics("")["replicas"], {})


class Rss(unittest.TestCase):
    def test_flat_and_growing(self):
        flat = [(t * 1.0, 50.0) for t in range(0, 100)]
        growing = [(t * 1.0, 50.0 + t) for t in range(0, 100)]
        self.assertEqual(rss_verdict([flat])["max_growth_mib"], 0.0)
        v = rss_verdict([flat, growing])
        self.assertGreater(v["max_growth_pct"], 100.0)
        self.assertGreater(v["last_vs_first_peak"], 2.0)
        # Too short to judge after warm-up: skipped.
        self.assertEqual(rss_verdict([[(0.0, 10.0), (5.0, 90.0)]])["max_growth_mib"], 0.0)


if __name__ == "__main__":
    unittest.main()

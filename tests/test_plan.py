"""``raypriv plan``: what a budget can show, before any training, without torch."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from raypriv.cli import main
from raypriv.config import load as load_config
from raypriv.metrics import clopper_pearson_lower, clopper_pearson_upper, epsilon_lower_bound_from_scores
from raypriv.planning import chance_bound, plan_rows, smallest_separable_tpr
from raypriv.split import balanced_keep
from tests.conftest import cli_error

# An import hook that refuses torch (sys.modules[...] = None would break SciPy's array-API probe of torch).
BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch is blocked in this test: " + name)
sys.meta_path.insert(0, _Block())
"""


def test_raypriv_plan_runs_without_torch():
    code = BLOCK_TORCH + textwrap.dedent("""
        from raypriv.cli import main
        assert main(["plan", "--models", "16"]) == 0
        assert main(["plan", "--until-decided", "--max-models", "32", "--round", "8", "--paradigms", "real,dpsgd"]) == 0
        print("torch loaded:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch loaded: False" in out.stdout
    assert "plan: digits-quick: fixed budget: 16 models; 200 audit samples; headline attack lira_online" in out.stdout
    assert "until decided: rounds of 8 up to 32 models, 4 looks" in out.stdout
    assert "dpsgd" in out.stdout and "no (needs 5000 OUT pairs)" in out.stdout  # 0.1% FPR at 8 or 16 models


def test_the_smallest_separable_tpr_is_the_first_count_that_clears_chance():
    n, alpha = 3200, 0.0125
    tpr = smallest_separable_tpr(n, n, 0.01, alpha)
    fpr_high = float(clopper_pearson_upper(32, n, alpha))
    count = round(tpr * n)
    assert float(clopper_pearson_lower(count, n, alpha)) > fpr_high >= float(clopper_pearson_lower(count - 1, n, alpha))
    assert smallest_separable_tpr(4 * n, 4 * n, 0.01, alpha) < tpr  # more pairs separate smaller leaks
    assert smallest_separable_tpr(10, 10, 0.5, 1e-6) is None  # even TPR = 100% is not separable from 50% with 10 pairs
    assert chance_bound(4 * n, 4 * n, 0.01, alpha) < chance_bound(n, n, 0.01, alpha)


def test_plan_rows_follow_the_budget_and_the_shipped_epsilon_bound():
    config = load_config({"n_models": 16, "paradigms": ["real"]})
    rows, bound_alpha, counts = plan_rows(config)
    assert counts == [16] and bound_alpha == pytest.approx(0.05 / 4)
    assert [(r.fpr, r.n_in, r.n_out, r.measurable) for r in rows] == [(0.001, 1600, 1600, False), (0.01, 1600, 1600, True)]
    keep = balanced_keep(16, 200, 0)  # the run's own keep matrix, a perfect attack on it
    assert rows[0].epsilon == epsilon_lower_bound_from_scores(keep, keep.astype(np.float64), delta=0.0) > 0
    decided = load_config({"budget": {"until": "decided", "max_models": 64, "round": 16}, "paradigms": ["real"]})
    rows, bound_alpha, counts = plan_rows(decided)
    assert counts == [16, 64] and bound_alpha == pytest.approx(0.05 / 4 / 4)  # 4 looks spend α
    first, last = [r for r in rows if r.fpr == 0.01 and r.models == 16][0], [r for r in rows if r.fpr == 0.01][-1]
    assert last.min_tpr < first.min_tpr and last.epsilon >= first.epsilon


def test_plan_refuses_bad_budgets_with_one_line(capsys):
    assert "budget.round=8 does not divide budget.max_models=20" in cli_error(
        capsys, ["plan", "--until-decided", "--max-models", "20"])
    assert main(["plan", "--models", "8"]) == 0


def test_plan_reads_dpsgd_auto_delta_as_1e_5():
    """DP-SGD's default δ (auto) is 1e-5 below 10⁵ private samples: the plan's reachable ε bound uses it, not δ = 0."""
    from raypriv.config import load
    from raypriv.planning import paradigm_delta

    config = load(None, {"paradigms": "real,dpsgd", "paradigm_options.dpsgd.epsilon": 8.0})
    assert paradigm_delta(config, "dpsgd") == 1e-5 and paradigm_delta(config, "real") == 0.0
    explicit = load(None, {"paradigms": "dpsgd", "paradigm_options.dpsgd.delta": 1e-6})
    assert paradigm_delta(explicit, "dpsgd") == 1e-6

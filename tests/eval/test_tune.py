"""`panel tune`: k-fold cross-validation whose folds cannot leak, intervals that refuse noise, and
a written tasks.yaml entry that `panel eval` replays (on a synthetic file; fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluation import matrix, stats, tune
from evaluation.cascade import CascadeSpec
from evaluation.replay import agreement_for, load
from tests.eval import cascade_data

REPO = Path(__file__).resolve().parents[2]
AGREE = agreement_for("choice")


def setup(tmp_path: Path, data: list[dict[str, object]]) -> tuple[list, matrix.Matrix]:
    rows = load(cascade_data.write(tmp_path / "s.jsonl", data))
    return rows, matrix.build(rows, {})


def poison(data: list[dict[str, object]], index: set[int]) -> list[dict[str, object]]:
    """Rows whose labels say the cheap model is always right and sure, and the others always
    wrong: a policy that saw them would stop at the cheap model."""
    out = []
    for i, r in enumerate(data):
        r = yaml.safe_load(yaml.safe_dump(r))
        if i in index:
            for name, rec in r["models"].items():  # type: ignore[attr-defined]
                rec["correct"] = name == "cheap"
                rec["conf"] = 0.0 if name == "cheap" else -3.0
        out.append(r)
    return out


def test_a_held_out_row_cannot_change_its_own_folds_policy(tmp_path: Path) -> None:
    data = cascade_data.rows(150)
    rows, m = setup(tmp_path, data)
    before = tune.cross_validate(rows, m, {}, AGREE, k=5)
    held_out = {int(i) for i in before.test_index[0]}
    rows2, m2 = setup(tmp_path, poison(data, held_out))
    after = tune.cross_validate(rows2, m2, {}, AGREE, k=5)
    assert after.policies[0].spec == before.policies[0].spec  # fold 0 never saw its own rows
    # the poison is strong enough to move a policy that does see it: the test can fail
    others = {int(i) for i in before.test_index[1]}
    rows3, m3 = setup(tmp_path, poison(data, others))
    moved = tune.cross_validate(rows3, m3, {}, AGREE, k=5)
    assert moved.policies[0].spec != before.policies[0].spec


def test_fit_receives_only_the_training_rows(tmp_path: Path) -> None:
    rows, m = setup(tmp_path, cascade_data.rows(60))
    seen: list[tuple[str, ...]] = []
    real = tune.fit

    def spy(train: matrix.Matrix, *a: object, **kw: object) -> tune.Fitted:
        seen.append(train.ids)
        return real(train, *a, **kw)  # type: ignore[arg-type]

    tune.fit = spy  # type: ignore[assignment]
    try:
        cv = tune.cross_validate(rows, m, {}, AGREE, k=3)
    finally:
        tune.fit = real  # type: ignore[assignment]
    for ids, test in zip(seen, cv.test_index, strict=True):
        assert not set(ids) & {m.ids[i] for i in test} and len(ids) == m.n - len(test)


def test_the_search_finds_the_confidence_gate_and_scores_it_as_the_replay_does(tmp_path: Path) -> None:
    rows, m = setup(tmp_path, cascade_data.rows(200))
    fitted = tune.fit(m, AGREE)
    assert fitted.spec.stages[0].accept.check == "logprob" and len(fitted.spec.stages) >= 2
    strong = m.right[:, m.col("strong")]
    assert fitted.train_accuracy >= strong.mean() - 0.005
    assert fitted.train_cost < 0.8 * m.cost[:, m.col("strong")].mean()
    right, cost = tune.outcome(rows, fitted.spec, {}, m.unit)  # the lane's row-by-row rules agree with the search
    assert right.mean() == pytest.approx(fitted.train_accuracy) and cost.mean() == pytest.approx(fitted.train_cost)


def test_a_difference_inside_the_noise_is_not_called_a_gain() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(300) < 0.85
    b = a.copy()
    right, wrong = np.flatnonzero(a), np.flatnonzero(~a)
    b[right[:6]] = False  # b loses six questions a gets right and wins three a gets wrong: a is +1 point
    b[wrong[:3]] = True
    c = np.ones(300)
    noisy = stats.paired(a, b, c, c)
    assert 0 < noisy.diff < 0.02 and noisy.verdict == "no significant gain"
    clear = stats.paired(np.ones(300, bool), rng.random(300) < 0.7, c, c)
    assert clear.verdict == "significant gain"
    lo, hi = stats.wilson(255, 300)
    assert lo < 0.85 < hi and hi - lo < 0.09


def test_tune_writes_an_entry_that_panel_eval_replays_on_other_rows(tmp_path: Path) -> None:
    data = cascade_data.rows(240, seed=5)
    train = cascade_data.write(tmp_path / "train.jsonl", data[:120])
    test = cascade_data.write(tmp_path / "test.jsonl", data[120:])
    policy = tmp_path / "policy.yaml"
    run = [sys.executable, "-m", "producer"]
    proc = subprocess.run([*run, "tune", str(train), "--write", str(policy), "--task-class", "qa_choice"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for row_name in ("tuned (out-of-fold)", "hindsight", "strongest=strong", "fusion:judge-always", "fusion:majority-first",
                     "single:cheap", "targets:"):  # fmt: skip
        assert row_name in proc.stdout
    entry = yaml.safe_load(policy.read_text())["task_classes"]["qa_choice"]
    assert entry["default_lane"] == "cascade" and {"single", "panel", "cascade"} <= set(entry)
    CascadeSpec.from_entry(entry["cascade"])  # the shared schema (CASCADE-SCHEMA.md)
    # --offline: the replay with intervals (through the fleet: tests/eval/test_eval_fleet.py)
    proc = subprocess.run([*run, "eval", str(test), "--policy", str(policy), "--offline", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "qa_choice:" in proc.stdout and "goal >= 0.99x accuracy at <= 0.5x cost" in proc.stdout


def test_a_bad_replay_line_names_file_line_and_field(tmp_path: Path) -> None:
    data = cascade_data.rows(3)
    data[1]["models"]["mid"]["cost_usd"] = "cheap"  # type: ignore[index]
    path = cascade_data.write(tmp_path / "bad.jsonl", data)
    proc = subprocess.run([sys.executable, "-m", "producer", "tune", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "bad.jsonl:2: models.mid.cost_usd:" in proc.stderr


def test_cascade_entries_are_range_checked() -> None:
    with pytest.raises(ValueError, match=r"cascade.stages.0.accept.*log-probability"):
        CascadeSpec.from_entry({"stages": [{"model": "a", "accept": {"check": "logprob", "min": 0.5}}, {"model": "b"}]})
    with pytest.raises(ValueError, match="needs a check"):
        CascadeSpec.from_entry({"stages": [{"model": "a"}, {"model": "b"}]})
    with pytest.raises(ValueError, match="exactly one"):
        CascadeSpec.from_entry({"stages": [{"model": "a", "panel": {"members": ["b"], "quorum": 1}}]})


def test_a_file_without_costs_counts_calls(tmp_path: Path) -> None:
    data = cascade_data.rows(60)
    for r in data:
        for rec in r["models"].values():  # type: ignore[attr-defined]
            rec["cost_usd"] = rec["tokens_in"] = rec["tokens_out"] = None
    rows, m = setup(tmp_path, data)
    assert m.unit == "calls"
    cv = tune.cross_validate(rows, m, {}, AGREE, k=3)
    assert set(np.unique(cv.cost)) <= {1.0, 2.0, 3.0}  # whole calls per question, no dollars invented


def noise_gate_rows(n: int, seed: int) -> list[dict[str, object]]:
    """A cheap model (70%) whose log-probability is pure noise, uniform on [-1, 0], and a strong one
    (90%): the truth is known. A gate accepting share p of the cheap model's answers has accuracy
    0.9 - 0.2p on new questions whatever its threshold, so every gate loses accuracy: the right policy
    is the strong model alone (or a gate too small to matter)."""
    data = cascade_data.rows(n, seed)
    rnd = np.random.default_rng(seed)
    for r in data:
        models = r["models"]  # type: ignore[index]
        gold = r["gold"]
        for name, acc in (("cheap", 0.70), ("strong", 0.90)):
            right = bool(rnd.random() < acc)
            answer = gold if right else next(c for c in "ABCD" if c != gold)
            models[name].update(answer=answer, text=answer, correct=right, conf=round(float(-rnd.random()), 4))
        for name in ("mid", "other"):
            del models[name]
    return data


def test_the_default_rule_refuses_a_gate_that_only_fits_its_training_rows(tmp_path: Path) -> None:
    """On 20 training sets of 150 rows, the default rule's policy keeps >= 0.99x the strong model's
    true accuracy every time; the old rule (point accuracy within 0.5 point, any accept region) is
    fooled by a lucky threshold on some of them (the spec can fail)."""

    def true_ratio(spec: CascadeSpec) -> float:
        gate = spec.stages[0]
        if gate.accept is None or gate.model != "cheap":
            return 1.0 if spec.stages[-1].model == "strong" and len(spec.stages) == 1 else 0.0
        p = min(1.0, max(0.0, 1.0 + float(gate.accept.min)))  # P(conf >= min) for conf ~ U[-1, 0]
        return (0.9 - 0.2 * p) / 0.9

    old = tune.Rule(z=0.0, min_support=0)
    ratios: dict[str, list[float]] = {"default": [], "old": []}
    for seed in range(20):
        rows, m = setup(tmp_path, noise_gate_rows(150, seed))
        ratios["default"].append(true_ratio(tune.fit(m, AGREE).spec))
        ratios["old"].append(true_ratio(tune.fit(m, AGREE, old).spec))
    assert min(ratios["default"]) >= 0.99
    assert min(ratios["old"]) < 0.99


def test_the_transfer_harness_tunes_on_one_half_and_scores_the_written_policy_on_the_other(tmp_path: Path) -> None:
    from evaluation import transfer

    a, b = transfer.halves(101, seed=4)
    assert not set(a) & set(b) and len(a) + len(b) == 101
    path = cascade_data.write(tmp_path / "t.jsonl", cascade_data.rows(240, seed=5))
    rows = load(path)
    res = transfer.run(path, tune.Rule(), splits=3)
    for seed, r in enumerate(res):  # each split re-done by hand: fit on the train half, replay on the other
        train, test = transfer.halves(len(rows), seed)
        fitted = tune.fit(matrix.build([rows[j] for j in train], {}), AGREE)
        right, _ = tune.outcome([rows[j] for j in test], fitted.spec, {}, "USD")
        strong = np.array([rows[j].models["strong"].correct for j in test])  # the train half's strongest here
        assert r.policy == fitted.spec.describe()
        assert r.acc_vs_train_pick == pytest.approx(right.mean() / strong.mean())
    s = transfer.summary(res)
    assert 0 <= s["met"] <= s["acc_ok"] <= 1 and s["cost_median"] > 0


def test_confirm_stages_score_in_the_search_as_the_replay_does(tmp_path: Path) -> None:
    """A gated model, another model confirming its unsure answer (`agrees_previous`), the last:
    the vectorised search and the cascade lane's row-by-row rules give the same right/cost."""
    from evaluation import space as search

    rows, m = setup(tmp_path, cascade_data.rows(120))
    s = search.build(m, AGREE, confirms=True)
    correct, _, cost, _ = s.flat()
    picked = [i for i in range(correct.size) if "agrees" in s.spec(i).describe()]
    assert picked  # the family is in the space
    for i in picked[:: max(1, len(picked) // 7)]:
        right, c = tune.outcome(rows, s.spec(i), {}, m.unit)
        assert right.sum() == correct[i] and c.sum() == pytest.approx(cost[i]), s.spec(i).describe()
    with pytest.raises(ValueError, match="agrees_previous needs a stage before it"):
        CascadeSpec.from_entry({"stages": [{"model": "cheap", "accept": {"check": "agrees_previous"}}, {"model": "strong"}]})


def test_a_budget_buys_the_most_accurate_eligible_policy_it_can_afford(tmp_path: Path) -> None:
    """`--budget B` (the default 0.40): of the eligible policies, the most accurate (smoothed)
    costing <= B x the strongest model; none that cheap, or `--budget off`: the cheapest."""
    from evaluation import space as search

    _, m = setup(tmp_path, cascade_data.rows(200))
    space = search.build(m, AGREE, rates=tune.Rule().rates(m.n))
    s = tune.strongest(m)
    bar, max_cost = float(m.right[:, s].mean()), float(m.cost[:, s].sum())
    cheapest = tune.choose(space, bar, tune.Rule(budget=None), max_cost)
    bought = tune.choose(space, bar, tune.Rule(budget=0.45), max_cost)
    assert tune.Rule().budget == tune.DEFAULT_BUDGET == 0.40
    _, smooth, cost, _ = space.flat()
    eligible = np.flatnonzero(tune.eligible(space, bar, tune.Rule(), max_cost)).tolist()
    affordable = [i for i in eligible if cost[i] <= 0.45 * max_cost]
    assert cheapest != bought and cost[bought] <= 0.45 * max_cost and bought in eligible
    assert smooth[bought] == max(smooth[i] for i in affordable) > smooth[cheapest]
    assert tune.choose(space, bar, tune.Rule(budget=1e-6), max_cost) == cheapest  # nothing that cheap


def test_a_budget_outside_0_1_is_refused_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from producer import cli

    with pytest.raises(ValueError, match=r"--budget: a share of the strongest model's cost in \(0, 1\], got 1.5"):
        tune.Rule(budget=1.5)
    path = cascade_data.write(tmp_path / "s.jsonl", cascade_data.rows(40))
    assert cli.main(["tune", str(path), "--budget", "0"]) == 2
    assert "panel tune: --budget: a share of the strongest model's cost in (0, 1], got 0.0" in capsys.readouterr().err
    assert cli.main(["tune", str(path), "--budget", "half"]) == 2
    assert "panel tune: --budget: a share of the strongest model's cost in (0, 1], or off; got 'half'" in capsys.readouterr().err
    assert tune.parse_budget("off") is None and tune.parse_budget("0.3") == 0.3
    assert cli.main(["tune", str(path), "--budget", "off"]) == 0  # the cheapest eligible, the rule before


@pytest.mark.parametrize("n", [1, 3])
def test_a_file_of_fewer_questions_than_folds_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              n: int) -> None:  # fmt: skip
    """A handful of labelled jobs exported from the ledger: refused in one line that says how many
    questions the folds need, and (with 2 or more) that fewer folds would run; they do."""
    from producer import cli

    path = cascade_data.write(tmp_path / "s.jsonl", cascade_data.rows(n))
    assert cli.main(["tune", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"panel tune: --folds: 5 folds need at least 5 questions and the file has {n}: label more jobs" in err
    assert ("--folds 3" in err) == (n == 3)
    if n == 3:
        assert cli.main(["tune", str(path), "--folds", "3"]) == 0


def test_a_file_of_one_model_tunes_an_entry_the_fleet_loads(tmp_path: Path) -> None:
    """Labelled jobs of a cascade whose later stages ran on few of them keep one model (the rest
    are in < 90% of the rows): the written entry's seed panel is that one model, with a quorum it
    can reach, and the fleet's loader takes the file; `panel eval` refuses a panel it cannot
    reach in one line, before starting a fleet."""
    from evaluation import fleet_run
    from evaluation.policy import load_any
    from producer import cli
    from workers.policy import PolicyTable
    from workers.registry import Registry

    data = [{**r, "models": {"cheap": r["models"]["cheap"]}} for r in cascade_data.rows(20)]
    path = cascade_data.write(tmp_path / "one.jsonl", data)
    written = tmp_path / "p.yaml"
    assert cli.main(["tune", str(path), "--write", str(written), "--task-class", "qa"]) == 0
    policies = tmp_path / "policies"
    policies.mkdir()
    fleet_run.write_policies(policies, load(path), load_any(str(written)), fleet_run.prices_near(path))
    PolicyTable.load(Registry.load(policies / "models.yaml"), policies / "tasks.yaml")
    entry = yaml.safe_load(written.read_text())
    entry["task_classes"]["qa"]["panel"]["quorum"] = 2
    written.write_text(yaml.safe_dump(entry))
    with pytest.raises(ValueError, match=r"the fleet refuses the policy: .*p.yaml: task_classes.qa.panel: quorum: 2 is more than the 1 members"):
        fleet_run.run(path, load(path), load_any(str(written)))


def test_transfer_pools_files_as_one_file_of_their_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--pool`: the files' rows are split as one file (halves the size of the hidden test's)."""
    from evaluation import transfer

    a, b = cascade_data.rows(80, seed=2), cascade_data.rows(80, seed=3)
    for r in b:
        r["id"] = f"b{r['id']}"
    fa, fb = cascade_data.write(tmp_path / "a.jsonl", a), cascade_data.write(tmp_path / "b.jsonl", b)
    both = cascade_data.write(tmp_path / "both.jsonl", a + b)
    assert transfer.main([str(fa), str(fb), "--pool", "--splits", "2", "--budget", "0.45"]) == 0
    pooled = capsys.readouterr().out
    assert transfer.main([str(both), "--splits", "2", "--budget", "0.45"]) == 0
    whole = capsys.readouterr().out
    assert pooled.startswith("a.jsonl+b.jsonl: 2 random half splits") and "--budget 0.45" in pooled
    assert pooled.split("\n", 1)[1] == whole.split("\n", 1)[1]  # the same splits, policies and figures


def test_the_strongest_model_is_also_chosen_out_of_fold_as_the_fair_yardstick(tmp_path: Path) -> None:
    """Two models right on as many rows of the file, each ahead on some folds' training rows: the
    file's strongest model is a choice made in hindsight; each fold's own pick, scored on that
    fold's rows, is the single-model baseline chosen the way the tuned policy is."""
    data = cascade_data.rows(100)
    for i, r in enumerate(data):
        recs = r["models"]
        recs["mid"]["correct"], recs["strong"]["correct"] = i % 5 != 0, i % 5 != 1  # 80 rows each
        recs["cheap"]["correct"] = recs["other"]["correct"] = i % 2 == 0  # 50: never the strongest
    rows, m = setup(tmp_path, data)
    cv = tune.cross_validate(rows, m, {}, AGREE, k=5)
    assert set(cv.singles) == {"mid", "strong"}  # the folds disagree on the strongest model
    for test, pick in zip(cv.test_index, cv.singles, strict=True):
        assert pick == m.models[tune.strongest(m.take(np.setdiff1d(np.arange(m.n), test)))]
        assert (cv.single_right[test] == m.right[test, m.col(pick)]).all()
        assert (cv.single_cost[test] == m.cost[test, m.col(pick)]).all()
    from evaluation import tune_cli

    res = tune_cli.run(tmp_path / "s.jsonl", 5, 0, rows=rows)
    assert res.oof_strongest.accuracy == pytest.approx(cv.single_right.mean())
    assert res.oof_strongest.accuracy < res.strongest.accuracy  # the hindsight pick is the better yardstick here
    assert "strongest chosen out of fold (" in tune_cli.report(res, 5)

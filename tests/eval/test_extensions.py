"""`evaluation.extensions`: the measured-not-shipped space families. The default variant scores as
headroom's replay by the lane's rules; a family only adds candidates; its thresholds come from the
train half's rows, never from the rows it is scored on; each family's check means what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation import extensions, headroom, matrix, tune
from evaluation.extensions import Variant
from evaluation.fleet_run import prices_near
from evaluation.matrix import Matrix
from evaluation.replay import agreement_for, load
from tests.eval import cascade_data

AGREEMENT = {"rule": "choice"}


def synthetic(tmp_path: Path) -> tuple[Path, Matrix]:
    path = cascade_data.write(tmp_path / "s.jsonl", cascade_data.rows(200))
    return path, matrix.build(load(path), prices_near(path))


def test_the_default_variant_scores_the_tuned_pick_as_headroom_replays_it(tmp_path: Path) -> None:
    path, m = synthetic(tmp_path)
    rows, rule = load(path), tune.Rule()
    whole = tune.fit(m, AGREEMENT, rule)
    for seed in range(4):
        ours = extensions.one(m, AGREEMENT, rule, Variant(), seed)
        theirs = headroom.one(rows, m, prices_near(path), rule, seed, whole)
        assert (ours.tuned_met, ours.oracle_met) == (theirs.tuned_met, theirs.oracle_met)
        assert ours.tuned_acc == pytest.approx(theirs.tuned_acc) and ours.tuned_cost == pytest.approx(theirs.tuned_cost)
        assert ours.oracle_best_acc == pytest.approx(theirs.oracle_best_acc)


@pytest.mark.parametrize("family", extensions.FAMILIES)
def test_a_family_adds_candidates_after_the_default_space_and_changes_none_of_them(tmp_path: Path, family: str) -> None:
    _, m = synthetic(tmp_path)
    base = extensions.space_for(m, AGREEMENT, tune.Rule(), Variant())
    more = extensions.space_for(m, AGREEMENT, tune.Rule(), Variant(frozenset([family])))
    b, x = base.flat(), more.flat()
    assert x[0].size > b[0].size
    for ours, theirs in zip(b, x, strict=True):
        assert np.array_equal(ours, theirs[: ours.size])


def tiny(conf: list[list[float]], answers: list[list[int]]) -> Matrix:
    n = len(conf)
    key = np.array(answers)
    return Matrix(("a", "b", "c"), tuple(f"q{i}" for i in range(n)), key == 0, np.tile([1.0, 2.0, 10.0], (n, 1)),
                  np.array(conf), key, np.ones((n, 3)), "USD")  # fmt: skip


def test_pairconf_accepts_an_agreement_only_when_both_answers_are_sure() -> None:
    m = tiny([[-0.01, -0.02, 0.0], [-0.9, -0.01, 0.0], [-0.01, -0.01, 0.0], [-0.01, -0.01, 0.0]],
             [[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 0]])  # fmt: skip
    stage = extensions.pairconf(m, m, "a", "b", np.array([0.5]))
    # agreeing rows 0, 1, 3 (min conf -0.02, -0.9, -0.01); the median over them is -0.02: row 1 (a unsure) escalates
    assert stage.accept.tolist() == [[True, False, False, True]]
    assert stage.cost.tolist() == [[3.0] * 4]


def test_band_pays_the_confirming_model_only_where_the_first_was_not_very_unsure() -> None:
    m = tiny([[-0.01, 0.0, 0.0], [-0.2, 0.0, 0.0], [-3.0, 0.0, 0.0], [-0.1, 0.0, 0.0]],
             [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0]])  # fmt: skip
    stage = extensions.band(m, m, "a", "b", np.array([0.75]))
    assert stage.cost.tolist() == [[2.0, 2.0, 0.0, 2.0]]  # row 2: a is far below the band, b never asked
    assert stage.accept.tolist() == [[True, True, False, False]]  # row 3: asked, disagrees


@pytest.mark.parametrize("make", [extensions.pairconf, extensions.confirmconf, extensions.band])
def test_thresholds_come_from_the_fit_rows_not_from_the_rows_scored(make: object) -> None:
    fit = tiny([[-0.01, -0.02, 0.0], [-0.2, -0.1, 0.0], [-0.3, -0.01, 0.0], [-0.05, -0.04, 0.0]], [[0, 0, 0]] * 4)
    scored = tiny((np.array(fit.conf) - 10.0).tolist(), [[0, 0, 0]] * 4)  # every answer far less sure than any fit row
    stage = make(scored, fit, "a", "b", np.array([0.25, 0.5, 0.95]))  # type: ignore[operator]
    assert not stage.accept.any()  # thresholds set on `scored` itself would accept ~25/50/95% of its rows
    assert make(fit, fit, "a", "b", np.array([0.25, 0.5, 0.95])).accept.any()  # type: ignore[operator]


def test_an_unknown_variant_names_the_flag_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"--variants: unknown \['fourr'\]; use pairconf"):
        Variant.parse("four+fourr")
    assert Variant.parse("confirm+band+budget0.4") == Variant(frozenset(["band"]), True, 0.4)


def test_the_real_files_default_row_is_headroom_s(replay_dir: Path) -> None:
    """On a recorded file, the default variant's oracle and tuned shares are headroom's (same seeds)."""
    path = replay_dir / "medmcqa_train.jsonl"
    rows = load(path)
    m, rule = matrix.build(rows, prices_near(path)), tune.Rule()
    agreement = agreement_for(rows[0].kind)
    whole = tune.fit(m, agreement, rule)
    for seed in range(3):
        ours, theirs = (
            extensions.one(m, agreement, rule, Variant(), seed),
            headroom.one(rows, m, prices_near(path), rule, seed, whole),
        )
        assert (ours.tuned_met, ours.oracle_met) == (theirs.tuned_met, theirs.oracle_met)
        assert ours.tuned_acc == pytest.approx(theirs.tuned_acc) and ours.tuned_cost == pytest.approx(theirs.tuned_cost)


def test_candidate_rows_sum_to_the_space_s_counts(tmp_path: Path) -> None:
    _, m = synthetic(tmp_path)
    space = extensions.space_for(m, AGREEMENT, tune.Rule(), Variant())
    correct, _, cost, _ = space.flat()
    idx = np.random.default_rng(3).choice(correct.size, 300, replace=False)
    right, each = space.rows(idx)
    assert np.array_equal(right.sum(axis=1), correct[idx])
    assert np.allclose(each.sum(axis=1), cost[idx])


def test_pmet_takes_the_candidate_that_meets_the_target_over_one_that_is_cheaper_and_misses() -> None:
    """a: cheap, right on 70% of rows; b: the strongest, right on all; c: costs 0.45x b, right on 99.5%."""
    n = 200
    right = np.ones((n, 3), bool)
    right[: int(0.3 * n), 0] = False
    right[0, 2] = False
    m = Matrix(("a", "b", "c"), tuple(f"q{i}" for i in range(n)), right, np.tile([0.1, 10.0, 4.5], (n, 1)),
               np.full((n, 3), np.nan), np.where(right, 0, 1), np.ones((n, 3)), "USD")  # fmt: skip
    space = extensions.space_for(m, AGREEMENT, tune.Rule(), Variant())
    for among in ("eligible", "any"):
        spec = space.spec(extensions.choose_pmet(space, m, tune.Rule(), among))
        assert [s.model for s in spec.stages] == ["c"], among


def test_pmet_variants_parse() -> None:
    assert Variant.parse("pmet").pmet == "eligible" and Variant.parse("pmetany+confirm").pmet == "any"
    assert Variant.parse("budgetoff").pmet == ""

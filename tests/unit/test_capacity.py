"""`panel capacity`: the plan's arithmetic from a profile and a models file, and the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from producer.capacity import Profile, plan, predict_machine
from producer.errors import PanelError

REG = {"a": {"provider": "p1", "rpm": 600, "tpm": 400_000}, "b": {"provider": "p2", "rpm": 1200, "tpm": 10_000_000}}
PROF = Profile(tier_cpu_ms=7.0, control_cpu_ms=2.0, producer_cpu_ms=1.0, broker_cmds=20.0, state_cmds=60.0,
               redis_ops_per_core=40_000.0, core_utilisation=0.7, call_latency_s=1.0, threads_per_process=128,
               tokens_per_call=1500)  # fmt: skip


def test_the_plan_divides_the_load_by_what_each_part_carries() -> None:
    pl = plan(100, 3, PROF, ["a", "b"], REG)  # 300 member calls/s, 150 per model
    assert pl.calls_s == 300 and pl.per_tier == pytest.approx(100) and pl.tiers == 3  # 1000/7 x 0.7 = 100 < 128 threads
    assert pl.per_control == pytest.approx(350) and pl.controls == 1
    assert (pl.broker_ops, pl.brokers, pl.state_ops, pl.state_shards) == (6000, 1, 18000, 1)
    a, b = pl.model_keys
    assert (a.rpm_need, a.tpm_need) == (9000, 13_500_000)
    assert a.keys == 34 and b.keys == 8  # a: tpm-bound (13.5 M / 400 k); b: rpm-bound (9,000 / 1,200)
    assert pl.hot_provider_evals == pytest.approx(450)  # 150 calls/s on one provider x 3 evals
    assert pl.broker_ceiling == pytest.approx(40_000 / 20 / 3)


def test_threads_bound_a_tier_process_when_the_provider_is_slow() -> None:
    slow = PROF.model_copy(update={"call_latency_s": 4.0})
    assert plan(100, 3, slow, ["a"], REG).per_tier == pytest.approx(32)  # 128 threads / 4 s
    assert plan(1000, 3, PROF, ["a"], REG).brokers == 2  # 60,000 commands/s on 40,000 per Redis


def test_one_machine_counts_every_process_and_measured_redis_cpu_replaces_the_modelled() -> None:
    modelled = predict_machine(PROF, 2, 3)  # Redis modelled as (20 + 60) commands at 40,000/0.7 per s
    assert modelled == pytest.approx(2000 / (7 + 2 + 1 + 80 * 1000 / (40_000 / 0.7)) / 3)
    measured = PROF.model_copy(update={"redis_cpu_ms": 3.0, "sim_cpu_ms": 2.0})
    assert predict_machine(measured, 2, 3) == pytest.approx(2000 / (7 + 2 + 1 + 2 + 3) / 3)


def test_an_unknown_model_is_named_with_the_known_ones() -> None:
    with pytest.raises(PanelError, match=r"--models: zz not in models.yaml \(known: a, b\)"):
        plan(1, 3, PROF, ["a", "zz"], REG)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer", "capacity", *args], capture_output=True, text=True, timeout=60)


def test_the_cli_prints_the_plan_from_a_profile_and_a_models_file(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": REG}))
    (tmp_path / "p.json").write_text(PROF.model_dump_json())
    out = cli("--panels-per-s", "100", "--profile", str(tmp_path / "p.json"), "--models", "a,b",
              "--models-file", str(tmp_path / "models.yaml"), "--cores", "2")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tier processes: 3 " in out.stdout and "control processes: 1 " in out.stdout
    assert "provider keys for a: 34 " in out.stdout and "provider keys for b: 8 " in out.stdout
    assert f"~{predict_machine(PROF, 2, 3):.1f} panels/s" in out.stdout


@pytest.mark.parametrize(("profile", "field"), [('{"tier_cpu_ms": 0}', "tier_cpu_ms"), ('{"tier_cpu": 5}', "tier_cpu"),
                                                ("not json", "(the file)")])  # fmt: skip
def test_a_bad_profile_is_refused_naming_the_field(tmp_path: Path, profile: str, field: str) -> None:
    (tmp_path / "p.json").write_text(profile)
    out = cli("--panels-per-s", "10", "--profile", str(tmp_path / "p.json"))
    assert out.returncode == 2 and f"field {field}" in out.stderr and "--measure --write" in out.stderr, out.stderr


def test_a_missing_profile_says_how_to_measure_one(tmp_path: Path) -> None:
    out = cli("--panels-per-s", "10", "--profile", str(tmp_path / "none.json"))
    assert out.returncode == 2 and "no such file" in out.stderr and "bench.capacity --measure" in out.stderr

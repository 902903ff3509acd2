"""The answer cache's and prompt caching's pure parts, and single flight on a real redis-server:
policy versions, keys, bad settings (file:line, the worker refuses to start), the wires' usage,
the simulator's prefix cache, and a failed leader handing over to its followers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from producer import answer_cache as pac
from producer import keys
from producer.contract import Job, Receipt, Result
from producer.embedded import child_env
from sim.prompt_cache import PromptCache, anthropic_prefix, openai_prefix
from tests.cache.conftest import cache_policies
from workers import answer_cache
from workers.errors import PolicyError
from workers.policy import PolicyTable
from workers.providers.anthropic import parse_message
from workers.providers.caching import limited_tokens, mark_stable_prefix, price
from workers.providers.openai import parse_completion
from workers.registry import Registry


def table(d: Path) -> PolicyTable:
    return PolicyTable.load(Registry.load(d / "models.yaml"), d / "tasks.yaml")


def edit(d: Path, fn: Any, file: str = "tasks.yaml") -> None:
    data = yaml.safe_load((d / file).read_text())
    fn(data)
    (d / file).write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("change", [
    ("a member", lambda t: t["task_classes"]["cached_panel"]["panel"]["members"].__setitem__(2, "llama3.2-3b"), "tasks.yaml"),
    ("the quorum", lambda t: t["task_classes"]["cached_panel"]["panel"].__setitem__("quorum", 3), "tasks.yaml"),
    ("a threshold", lambda t: t["task_classes"]["cached_panel"]["panel"]["agreement"].__setitem__("threshold", 0.8), "tasks.yaml"),
    ("the rule", lambda t: t["task_classes"]["cached_panel"]["panel"].__setitem__("agreement", {"rule": "exact"}), "tasks.yaml"),
    ("the rubric", lambda t: t["task_classes"]["cached_panel"].__setitem__("rubric", ["be brief"]), "tasks.yaml"),
    ("the arbiter", lambda t: t["task_classes"]["cached_panel"]["panel"].__setitem__("arbiter", "claude-3-5-sonnet"), "tasks.yaml"),
    ("a member's price", lambda m: m["models"]["gpt-4o-mini"]["price"].__setitem__("output", 0.7), "models.yaml"),
    ("a member's fallback", lambda m: m["models"]["gpt-4o-mini"].__setitem__("fallbacks", ["llama3.2-3b"]), "models.yaml"),
], ids=lambda c: c[0])  # fmt: skip
def test_any_change_to_what_decides_answers_makes_a_new_version(tmp_path: Path, change: Any) -> None:
    d = cache_policies(tmp_path / "p")
    before = answer_cache.version(table(d), "cached_panel")
    edit(d, change[1], change[2])
    assert answer_cache.version(table(d), "cached_panel") != before


def test_the_cache_setting_and_other_classes_leave_the_version_alone(tmp_path: Path) -> None:
    d = cache_policies(tmp_path / "p")
    before = answer_cache.version(table(d), "cached_panel")
    edit(d, lambda t: t["task_classes"]["cached_panel"].__setitem__("cache", {"ttl_s": 5}))
    edit(d, lambda t: t["task_classes"]["extraction"].__setitem__("budget_usd", 0.07))
    assert answer_cache.version(table(d), "cached_panel") == before
    published = answer_cache.published(table(d))
    assert set(published) == {"extraction", "cached_panel"}  # off by default: only the opted-in classes
    assert pac.ClassCache.model_validate_json(published["cached_panel"]).ttl_s == 5


def test_the_key_is_the_input_as_models_see_it_not_its_incidental_bytes() -> None:
    base = {"task_class": "x", "prompt": "Line one\nline two"}
    k = pac.cache_key(Job.parse(base), "v" * 16)
    assert pac.cache_key(Job.parse({**base, "prompt": "Line one  \r\nline two\n"}), "v" * 16) == k
    assert (
        pac.cache_key(
            Job.parse({"task_class": "x", "messages": [{"role": "user", "content": "Line one\nline two"}]}), "v" * 16
        )
        == k
    )
    for other in ({"prompt": "Line one\n  line two"}, {"tenant": "acme"}, {"flags": ["security"]}, {"lane": "panel"},
                  {"response_schema": {"type": "object"}}, {"task_class": "y"}):  # fmt: skip
        assert pac.cache_key(Job.parse({**base, **other}), "v" * 16) != k, other
    assert pac.cache_key(Job.parse(base), "w" * 16) != k
    assert pac.cache_key(Job.parse({**base, "cache": "bypass"}), "v" * 16) == k  # bypass is no part of the input


def test_a_job_asking_for_an_unknown_cache_use_is_refused_by_name() -> None:
    from producer.errors import ContractError

    with pytest.raises(ContractError, match="cache"):
        Job.parse({"task_class": "x", "prompt": "hi", "cache": "skip"})


@pytest.mark.parametrize("setting, field", [
    ({"ttl_s": 0}, "task_classes.extraction.cache.ttl_s"),
    ({"ttl_s": -5}, "task_classes.extraction.cache.ttl_s"),
    ({"ttl": 60}, "task_classes.extraction.cache.ttl"),
    ({"ttl_s": 60, "enabled": "yes"}, "task_classes.extraction.cache.enabled"),
    ({"enabled": True}, "task_classes.extraction.cache.ttl_s"),
])  # fmt: skip
def test_bad_cache_settings_name_file_line_and_field(tmp_path: Path, setting: dict[str, Any], field: str) -> None:
    d = cache_policies(tmp_path / "p")
    edit(d, lambda t: t["task_classes"]["extraction"].__setitem__("cache", setting))
    with pytest.raises(PolicyError) as e:
        table(d)
    text = str(e.value)
    lines = (d / "tasks.yaml").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines, 1) if ln.strip() == "cache:")  # extraction comes first
    last = field.rsplit(".", 1)[1] + ":"
    own = [i for i, ln in enumerate(lines[at : at + 2], at + 1) if ln.strip().startswith(last)]
    line = own[0] if own else at + 1  # a missing key: the first line of the block that lacks it
    assert f"{d / 'tasks.yaml'}:{line}: {field}" in text, (text, line)


def test_a_cache_read_price_above_input_is_refused_with_its_line(tmp_path: Path) -> None:
    d = cache_policies(tmp_path / "p")
    edit(d, lambda m: m["models"]["gpt-4o"]["price"].__setitem__("cache_read", 12.5), "models.yaml")
    with pytest.raises(PolicyError, match=r"models\.yaml:\d+.*cache_read"):
        Registry.load(d / "models.yaml")


def test_a_worker_given_a_bad_cache_setting_does_not_start(tmp_path: Path, redis_url: str) -> None:
    d = cache_policies(tmp_path / "p")
    edit(d, lambda t: t["task_classes"]["extraction"].__setitem__("cache", {"ttl_s": 0}))
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "control", "--pool", "threads",
                           "--concurrency", "1", "--without-mingle", "--without-gossip", "-n", "badcache@%h"],
                          env=child_env({"PANEL_REDIS_URL": redis_url, "PANEL_POLICIES": str(d)}),
                          capture_output=True, timeout=120)  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    assert f"panel-fleet: cannot start: {d / 'tasks.yaml'}:" in err and "cache.ttl_s" in err, err[-2000:]


def test_usage_of_each_wire_splits_cached_tokens() -> None:
    oa = parse_completion("openai", {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 2000, "completion_tokens": 10,
                                               "prompt_tokens_details": {"cached_tokens": 1536}}}, 1.0, "gpt-4o")  # fmt: skip
    assert (oa.tokens_in, oa.tokens_cached, oa.tokens_cache_write) == (2000, 1536, 0)
    an = parse_message("anthropic", {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                     "usage": {"input_tokens": 50, "output_tokens": 10, "cache_creation_input_tokens": 0,
                                               "cache_read_input_tokens": 1800}}, 1.0, "claude")  # fmt: skip
    assert (an.tokens_in, an.tokens_cached, an.tokens_cache_write) == (1850, 1800, 0)
    reg = Registry.load()
    # by hand: gpt-4o 464 uncached at $2.50, 1536 cached at $1.25, 10 out at $10 per 1M
    assert price(reg, "gpt-4o", oa) == pytest.approx((464 * 2.50 + 1536 * 1.25 + 10 * 10.0) / 1e6)
    # claude-3-5-sonnet: 50 at $3, 1800 read at $0.30, 10 out at $15
    assert price(reg, "claude-3-5-sonnet", an) == pytest.approx((50 * 3.0 + 1800 * 0.30 + 10 * 15.0) / 1e6)
    # the limiter: Anthropic leaves cache reads out of its input-token limit, OpenAI does not
    assert limited_tokens("anthropic", an) == 60 and limited_tokens("openai", oa) == 2010
    # a gateway that reports nonsense is read as nothing cached, never more than the prompt
    bad = parse_completion("x", {"choices": [{"message": {"content": "ok"}}], "usage": {
        "prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 99}}}, 1.0, "m")  # fmt: skip
    assert bad.tokens_cached == 10


def test_anthropic_marks_the_system_prefix_and_openai_keeps_it_first_and_identical() -> None:
    body = mark_stable_prefix({"system": "rules", "messages": []})
    assert body["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]
    assert mark_stable_prefix({"messages": []}) == {"messages": []}
    from workers.panel.arbiter import arbiter_messages

    a = arbiter_messages([{"role": "user", "content": "task one"}], {"m0": "A", "m1": "B"}, ["be right"])
    b = arbiter_messages([{"role": "user", "content": "another task"}], {"m0": "C", "m1": "D"}, ["be right"])
    assert a[0]["role"] == "system" and a[0] == b[0]  # the arbiter's stable prefix: first, byte-identical


def test_the_simulator_caches_a_prefix_within_its_ttl_per_model() -> None:
    cache = PromptCache(ttl_s=0.3, min_tokens=10)
    prefix = "x" * 400  # 100 tokens
    assert cache.split("m", prefix, 150).write == 100
    assert cache.split("m", prefix, 150).read == 100
    assert cache.split("other", prefix, 150).write == 100  # per model
    assert cache.split("m", "short", 150).read == 0  # under min_tokens: never cached
    time.sleep(0.35)
    assert cache.split("m", prefix, 150).write == 100  # expired: written again
    assert openai_prefix([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]) == "a"
    assert openai_prefix([{"role": "user", "content": "b"}, {"role": "system", "content": "a"}]) is None
    assert anthropic_prefix("plain string") is None
    assert (
        anthropic_prefix(
            [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}]
        )
        == "a"
    )


# --- single flight on a real redis-server


def _store(r: redis.Redis, job_id: str, job: Job) -> None:
    r.hset(keys.job(job_id), mapping={"spec": job.model_copy(update={"id": job_id}).model_dump_json(),
                                      "status": "queued", "submitted_at": time.time()})  # fmt: skip


def _admit(r: redis.Redis, job: Job, job_id: str) -> pac.Ticket:
    _store(r, job_id, job)
    return pac.admit(r, job, job_id, time.time(), 3600)


def test_a_failed_leader_hands_the_lead_to_its_first_follower_and_the_rest_follow_it(redis_client: redis.Redis) -> None:
    r = redis_client
    r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version="v" * 16, ttl_s=60, lead_ttl_s=60).model_dump_json())
    job = Job.parse({"task_class": "x", "prompt": "same question"})
    assert _admit(r, job, "L").role == "leader"
    assert [_admit(r, job, f"F{i}").role for i in range(3)] == ["follower"] * 3
    sent: list[str] = []
    answer_cache.settle(r, "L", Result(job_id="L", status="failed", error="boom"), 3600, 600, send=sent.append)
    assert sent == ["F0"]  # the first follower runs in the leader's place, once
    answer_cache.settle(r, "L", Result(job_id="L", status="failed", error="boom"), 3600, 600, send=sent.append)
    assert sent == ["F0"]  # a repeat (re-render after a crash) promotes nobody else
    k = pac.cache_key(job, "v" * 16)
    assert r.get(pac.lead_key(k)) == b"F0" and r.hget(keys.job("F0"), "acache_role") == b"leader"
    assert [r.hget(keys.job(f"F{i}"), "coalesced_with") for i in (1, 2)] == [b"F0", b"F0"]
    # F0 decides: its answer is cached and F1, F2 are served it, each once
    receipt = Receipt(job_id="F0", task_class="x", decision="single", total_cost_usd=0.002)
    decided = Result(job_id="F0", status="decided", answer="42", receipt=receipt)
    answer_cache.settle(r, "F0", decided, 3600, 600, send=sent.append)
    answer_cache.settle(r, "F0", decided, 3600, 600, send=sent.append)  # repeated: serves nobody twice
    for f in ("F1", "F2"):
        res = Result.model_validate_json(r.hget(keys.job(f), "result") or b"")
        assert res.answer == "42" and res.receipt and res.receipt.cached_from_job == "F0" and res.receipt.coalesced
        assert r.lrange(keys.done_channel(f), 0, -1) == [b"decided"]
    assert r.get(pac.lead_key(k)) is None and sent == ["F0"]
    assert _admit(r, job, "late").role == "hit"  # and the next one is served from the entry
    assert pac.Ticket("hit") and r.xlen(keys.LEDGER_STREAM) == 3


def test_a_leader_failing_alone_frees_the_key(redis_client: redis.Redis) -> None:
    r = redis_client
    r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version="v" * 16, ttl_s=60, lead_ttl_s=60).model_dump_json())
    job = Job.parse({"task_class": "x", "prompt": "q"})
    assert _admit(r, job, "L").role == "leader"
    answer_cache.settle(r, "L", Result(job_id="L", status="failed", error="boom"), 3600, 600, send=lambda j: None)
    assert _admit(r, job, "next").role == "leader"  # not a follower of a leader that is gone

"""Real Flower (basic auth on, as compose and k8s run it) beside a real fleet: what a person
watching the fleet sees, and what a stranger without the password does not."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producer import keys
from tests.ops.conftest import FinishedPanels, Flower, MeteredFleet

pytestmark = pytest.mark.integration


def flower_tasks_of(flower: Flower, job_ids: list[str], settled: int, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """Flower's tasks whose args name one of the jobs, once `settled` of them have succeeded
    (events reach Flower asynchronously)."""
    tasks: dict[str, dict[str, Any]] = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        listed = flower.api("/api/tasks", limit=1000).raise_for_status().json()
        tasks = {tid: t for tid, t in listed.items() if any(j in str(t.get("args")) for j in job_ids)}
        if sum(t.get("state") == "SUCCESS" for t in tasks.values()) >= settled:
            break
        time.sleep(0.2)
    return tasks


def test_flower_lists_each_tier_worker(flower: Flower, ops_fleet: MeteredFleet) -> None:
    workers = flower.api("/api/workers", refresh=1).raise_for_status().json()
    names = {name.split("@")[0] for name in workers}
    assert {"control", "economy", "workhorse", "frontier"} <= names, sorted(workers)
    by_name = {name.split("@")[0]: info for name, info in workers.items()}
    queues = {n: {q["name"] for q in by_name[n].get("active_queues", [])} for n in ("economy", "workhorse", "frontier")}
    assert queues == {"economy": {"llm.economy"}, "workhorse": {"llm.workhorse"},
                      "frontier": {"llm.frontier", "llm.batch"}}  # fmt: skip


def test_flower_shows_a_finished_panels_tasks_by_readable_name_on_their_tier(
    flower: Flower, finished_panels: FinishedPanels
) -> None:
    early, arbitrated = finished_panels.early, finished_panels.arbitrated
    assert early.receipt is not None and arbitrated.receipt is not None
    sent_early = [c for c in early.receipt.calls if c.status != "skipped"]  # staged: the third never went out
    assert len(sent_early) == 2 and early.receipt.calls_saved == 1
    members = [c for c in arbitrated.receipt.calls if c.role == "member"]
    tasks = flower_tasks_of(flower, [early.job_id, arbitrated.job_id], settled=2 + len(sent_early) + len(members) + 1)

    where = sorted((t["name"], t["worker"].split("@")[0], t["state"]) for t in tasks.values())
    expected = sorted(
        [("panel.run", "control", "SUCCESS")] * 2
        + [("panel.member", "economy", "SUCCESS")] * len(sent_early)
        + [("panel.member", "workhorse", "SUCCESS")] * len(members)
        + [("panel.arbiter", "frontier", "SUCCESS")]
    )
    assert where == expected
    member_args = {t["args"] for t in tasks.values() if t["name"] == "panel.member"}
    assert f"['{early.job_id}.1', 'm0']" in member_args  # ids, not payloads


def test_flower_never_shows_a_prompt(flower: Flower, ops_fleet: MeteredFleet, finished_panels: FinishedPanels) -> None:
    results = finished_panels.results
    tasks = flower_tasks_of(flower, [r.job_id for r in results], settled=2)
    assert tasks
    dumps = [orjson.dumps(flower.api("/api/tasks", limit=1000).json())]
    dumps += [flower.api(f"/api/task/info/{tid}").raise_for_status().content for tid in tasks]
    dumps += [flower.api(f"/task/{tid}").raise_for_status().content for tid in tasks]  # the UI's task page
    dumps += [orjson.dumps(e) for e in finished_panels.events]
    r = redis.Redis.from_url(ops_fleet.redis_url)
    for result, prompt in zip(results, finished_panels.prompts, strict=True):
        tag = prompt.split(":")[0].encode()  # unique per run: it stands for the whole prompt
        assert tag in (r.hget(keys.job(result.job_id), "spec") or b""), "the search must find it where it is"
        assert not any(tag in d for d in dumps), f"{tag!r} visible in Flower or an event"


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/", "/tasks"])
def test_flower_rejects_requests_without_the_password(flower: Flower, path: str) -> None:
    assert flower.api(path).status_code == 200  # the route exists: a 401 below is the auth, not a typo
    assert httpx.get(f"{flower.url}{path}", timeout=5).status_code == 401
    assert httpx.get(f"{flower.url}{path}", auth=(flower.auth[0], "wrong"), timeout=5).status_code == 401


def test_each_decision_sends_a_panel_decided_event_on_the_deciding_task(
    flower: Flower, finished_panels: FinishedPanels
) -> None:
    by_job = {str(e["job_id"]): e for e in finished_panels.events}
    assert sorted(by_job) == sorted(r.job_id for r in finished_panels.results)
    assert len(finished_panels.events) == 2, "one event per decided job"
    tasks = flower_tasks_of(flower, list(by_job), settled=2)
    for result in finished_panels.results:
        event, receipt = by_job[result.job_id], result.receipt
        assert receipt is not None
        assert (event["decision"], event["early_exit"], event["calls"], event["calls_saved"]) == (
            receipt.decision, receipt.early_exit, len(receipt.calls), receipt.calls_saved)  # fmt: skip
        assert event["cost_usd"] == pytest.approx(receipt.total_cost_usd)
        # the event rides on the task that decided: a member (quorum) or the arbiter
        assert tasks[str(event["uuid"])]["name"] in ("panel.member", "panel.arbiter")
    assert by_job[finished_panels.arbitrated.job_id]["arbiter_calls"] == 1
    assert by_job[finished_panels.early.job_id]["early_exit"] is True


def test_flower_metrics_answer_without_auth_and_count_the_decision_events(
    flower: Flower, finished_panels: FinishedPanels
) -> None:
    end = time.monotonic() + 10
    decided = 0.0
    while time.monotonic() < end:
        resp = httpx.get(f"{flower.url}/metrics", timeout=5)
        assert resp.status_code == 200
        samples = [s for f in text_string_to_metric_families(resp.text) for s in f.samples]
        decided = sum(s.value for s in samples
                      if s.name == "flower_events_total" and s.labels.get("type") == "task-panel-decided")  # fmt: skip
        if decided >= 2:
            break
        time.sleep(0.2)
    assert decided == 2
    assert any(s.name == "flower_worker_online" and s.value == 1 for s in samples)

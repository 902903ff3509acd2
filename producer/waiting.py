"""`panel wait ID [ID ...]`: results as they finish, a progress bar for many, and a one-line error
(instead of a silent five-minute block) when the jobs sit in a queue that no worker consumes."""

from __future__ import annotations

import sys
import time

import orjson

from producer import connect, keys
from producer.client import PanelClient
from producer.contract import Result
from producer.errors import JobTimeout, NoWorker
from producer.progress import progress

NO_WORKER_CHECK_AFTER_S = 3.0  # a job still `queued` this long: ask whether any worker is alive


def wait_all(client: PanelClient, job_ids: list[str], timeout: float) -> dict[str, Result]:
    for jid in job_ids:
        client.status(jid)  # UnknownJob (exit 2) before any waiting
    results: dict[str, Result] = {}
    pending = list(dict.fromkeys(job_ids))
    t0 = time.monotonic()
    end, checked = t0 + timeout, False
    with progress("waiting", len(pending) if len(pending) > 1 else None) as tick:
        while pending:
            for jid in list(pending):
                res = client.result(jid)
                if res is not None and res.status in ("decided", "failed"):
                    results[jid] = res
                    pending.remove(jid)
            failed = sum(1 for r in results.values() if r.status == "failed")
            tick(len(results), f"{failed} failed" if failed else "")
            if not pending:
                break
            if time.monotonic() > end:
                raise JobTimeout(f"{len(pending)} of {len(job_ids)} jobs not done after {timeout:g}s "
                                 f"(job {pending[0]} is {client.status(pending[0])}); raise --timeout or check "
                                 "`panel status --providers`")  # fmt: skip
            if not checked and time.monotonic() - t0 > NO_WORKER_CHECK_AFTER_S:
                checked = True
                queued = [j for j in pending if client.status(j) == "queued"]
                if queued and not client.celery.control.ping(timeout=1.0):
                    raise NoWorker(f"job {queued[0]} is queued and no worker answers: start a fleet with `panel up` "
                                   "(or the workers by hand: README, 'Running it by hand')")  # fmt: skip
            # One BLPOP over many jobs' done lists (one job's on a cluster: their slots differ).
            # Put the signal back with its TTL: the pop emptied the list, and a list re-created
            # without a TTL is a key per job kept forever.
            many = pending[:1] if connect.is_cluster(client.redis) else pending[:200]
            got = client.redis.blpop([keys.done_channel(j) for j in many], timeout=1)
            if got is not None:
                pipe = client.redis.pipeline(transaction=True)  # one key
                pipe.rpush(got[0], got[1])
                pipe.expire(got[0], client.settings.result_ttl_s)
                pipe.execute()
    return results


def wait_cmd(client: PanelClient, job_ids: list[str], timeout: float) -> int:
    results = wait_all(client, job_ids, timeout)
    if len(job_ids) == 1:
        res = results[job_ids[0]]
        sys.stdout.write(orjson.dumps(res.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for jid in dict.fromkeys(job_ids):
            sys.stdout.write(orjson.dumps(results[jid].model_dump(mode="json")).decode() + "\n")
    return 0 if all(r.status == "decided" for r in results.values()) else 1

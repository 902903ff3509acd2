"""The arbiter of a batch panel, itself a batch line: the same prompt, verdict check, one retry
and majority fallback as the real-time arbiter (workers/panel/arbiter.py), at the batch price.

    messages = arbiter_messages_for(store, spec, job)             # the line flush() uploads
    turn = land_arbiter(chord, spec, job, outcome, batch=True)    # when its result comes back

A verdict that is not valid JSON of the verdict's shape is asked for once more (in a later batch,
or in real time near the deadline); after that, or when the call itself failed, the members'
majority is taken and flagged, exactly as in real time.
"""

from __future__ import annotations

from producer.contract import Job, Verdict
from workers.panel.arbiter import (
    anonymise,
    arbiter_messages,
    as_shown,
    decide_by_verdict,
    member_answers,
    parse_verdict,
    to_members,
)
from workers.panel.calls import CallOutcome
from workers.panel.chord import Turn, observe_call
from workers.panel.decision import Conclude, Nothing
from workers.panel.ports import Chord
from workers.panel.record import Call
from workers.panel.run import PanelRun
from workers.panel.state import PanelStore
from workers.providers.caching import price
from workers.registry import Registry

VERDICT_TRIES = 2  # the first verdict, and one retry when it is unusable


def arbiter_messages_for(store: PanelStore, spec: PanelRun, job: Job) -> list[dict[str, str]]:
    answers = member_answers(store, spec.panel_id)
    return arbiter_messages(job.chat(), as_shown(answers, anonymise(spec.panel_id, sorted(answers))), spec.rubric)


def needs_arbiter(store: PanelStore, panel_id: str) -> bool:
    """The panel is waiting for its arbiter (members exhausted, no verdict yet)."""
    return store.decided(panel_id) == "exhausted"


def land_arbiter(chord: Chord, spec: PanelRun, job: Job, res: CallOutcome, batch: bool) -> Turn:
    """Record one arbiter call; the turn's status is "retry" when one more verdict should be
    asked for (the caller sends it), else what decided the panel, with the actions to carry
    out. Safe to repeat after a decision: it only re-requests the conclusion."""
    pid = spec.panel_id
    store = chord.store
    if not needs_arbiter(store, pid):
        # idempotent: recovers a conclusion lost with its worker
        return Turn("not needed", spec, (Conclude(),) if store.decided(pid) == "arbiter" else Nothing)
    answers = member_answers(store, pid)
    prior = store.call(pid, "arbiter")
    tries = (prior.tries if prior else 0) + 1
    verdict: Verdict | None = None
    error = res.error
    rec = _accumulate(chord.registry, prior, res, batch, tries)
    labels = anonymise(pid, sorted(answers))
    if res.completion is not None:
        verdict = parse_verdict(res.completion.text, as_shown(answers, labels))
        verdict = to_members(verdict, labels) if verdict else None
        error = None if verdict else "verdict was not valid JSON of the verdict's shape"
    rec.error, rec.verdict, rec.anonymised = error, verdict.model_dump() if verdict else None, labels
    store.put_call(pid, rec)
    observe_call(rec)
    if verdict is None and res.completion is not None and tries < VERDICT_TRIES:
        return Turn("retry", spec)
    return decide_by_verdict(store, spec, job, verdict, answers)


def _accumulate(registry: Registry, prior: Call | None, res: CallOutcome, batch: bool, tries: int) -> Call:
    """The arbiter's one call record, summing every try (each is paid for)."""
    c = res.completion
    tokens_in = (prior.tokens_in if prior else 0) + (c.tokens_in if c else 0)
    tokens_out = (prior.tokens_out if prior else 0) + (c.tokens_out if c else 0)
    cost = (prior.cost_usd if prior else 0.0) + (price(registry, res.model, c, batch) if c else 0.0)
    before = (prior.realtime_cost_usd or prior.cost_usd) if prior else 0.0
    realtime = before + (price(registry, res.model, c) if c else 0.0)
    mspec = registry.model(res.model)
    replied = c is not None or (prior is not None and prior.status == "answered")  # a reply came, usable or not
    return Call(member="arbiter", role="arbiter", model=res.model, provider=mspec.provider, tier=mspec.tier,
                status="answered" if replied else "failed", tokens_in=tokens_in, tokens_out=tokens_out,
                latency_ms=(prior.latency_ms if prior else 0.0) + (c.latency_ms if c else 0.0), cost_usd=cost,
                realtime_cost_usd=realtime if batch else None, batch=batch and (prior.batch if prior else True),
                tries=tries)  # fmt: skip

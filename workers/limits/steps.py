"""Several Lua steps (limiter, breaker, budget) sent to Redis in one round trip.

    run_steps(r, [limiter.reconcile_step(res, used), breaker.record_step(permit, True), budget.settle_step(hold, usd)])

Each step is one script call, atomic on its own; together they are one pipeline (not one
transaction: each keeps its own invariant, none depends on another's result). EVALSHA is sent
directly, since a registered Script in a pipeline costs a SCRIPT EXISTS round trip first; a
script Redis lost (a restart) is loaded and the steps sent once more, which the callers allow:
they are sent again only when none ran (NOSCRIPT fails the step before it runs) or are
idempotent for what ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from producer import connect


@dataclass(frozen=True)
class ScriptStep:
    script: Script
    keys: list[str]
    args: list[Any]

    def run(self) -> Any:
        return self.script(keys=self.keys, args=self.args)


@dataclass
class Owed:
    """Steps a call still owes when it ends: an answer's settlement (its tokens reconciled, the
    breaker's success, its budget hold settled), or a cut-off call's give-back (tokens and hold
    returned, with its attempt's closing record in `also`), handed to whoever writes the member's
    record, so they travel in the record's round trip (workers/panel/state.py `put_call_and_vote`,
    `put_cut_off`). Sent once: `sent` is set as soon as a pipeline carrying them ran; whoever
    holds them last sends them alone if none did.

        owed = Owed()                             # filled by the call (workers/panel/calls.py)
        try: ...                                  # record + vote, with owed.steps in front
        finally: owed.send()                      # alone, unless they went with the record
    """

    r: Any = None  # the Redis the steps run on
    steps: list[ScriptStep | None] = field(default_factory=list)
    also: Callable[[Any], object] | None = None  # plain commands sent after the steps (an attempt's closing record)
    sent: bool = False

    def queue(self, pipe: Any) -> int:
        """Queue the steps (EVALSHA), then `also`, on `pipe`; returns how many commands were queued."""
        at = len(pipe)
        for s in self.steps:
            if s is not None:
                pipe.evalsha(s.script.sha, len(s.keys), *s.keys, *s.args)
        if self.also is not None:
            self.also(pipe)
        return len(pipe) - at

    def ran(self, results: Sequence[Any]) -> None:
        """The pipeline that carried them ran (`results`: the replies of what `queue` queued): a
        step Redis had lost the script of (NOSCRIPT: it did not run) runs alone, loading it."""
        self.sent = True
        todo = [s for s in self.steps if s is not None]
        for i, res in enumerate(results):
            if i < len(todo) and isinstance(res, redis.exceptions.NoScriptError):
                todo[i].run()
            elif isinstance(res, Exception):
                raise res

    def send(self) -> None:
        """Send the steps alone (one round trip) unless they went already."""
        if not self.sent and (any(self.steps) or self.also is not None):
            run_steps(self.r, self.steps, also=self.also)
        self.sent = True


def run_steps(r: redis.Redis, steps: Sequence[ScriptStep | None],
              also: Callable[[Any], object] | None = None) -> list[Any]:  # fmt: skip
    """Run the steps given (None: nothing to do) in one round trip; their results in the same
    order (None for None). Raises the first error a step returned. `also` queues plain commands
    (an attempt's record) after the steps, sent once with them; on a cluster it runs after them."""
    if connect.is_cluster(r):
        # redis-py's cluster pipeline refuses EVALSHA; each step keeps to one slot, so on a cluster
        # they go one by one (one round trip each, to the node holding the step's slot).
        out = [None if s is None else s.run() for s in steps]
        if also is not None:
            also(r)
        return out
    results: list[Any] = [None] * len(steps)
    todo = [i for i, s in enumerate(steps) if s is not None]
    for attempt in (1, 2):
        if len(todo) <= 1 and (also is None or attempt == 2):
            for i in todo:  # a registered Script loads itself on NOSCRIPT
                results[i] = steps[i].run()  # type: ignore[union-attr]
            return results
        pipe = r.pipeline(transaction=False)
        for i in todo:
            s = steps[i]
            assert s is not None
            pipe.evalsha(s.script.sha, len(s.keys), *s.keys, *s.args)
        extra = len(pipe.command_stack)
        if attempt == 1 and also is not None:  # sent once: a second send is only for scripts Redis lost
            also(pipe)
        sent = pipe.execute(raise_on_error=False)
        for res in sent[extra:]:
            if isinstance(res, Exception):
                raise res
        missing = []
        for i, res in zip(todo, sent[:extra], strict=True):
            if isinstance(res, redis.exceptions.NoScriptError):
                missing.append(i)
            elif isinstance(res, Exception):
                raise res
            else:
                results[i] = res
        if not missing:
            return results
        if attempt == 2:
            raise redis.exceptions.NoScriptError(f"{len(missing)} script(s) still missing after loading them")
        for script in {steps[i].script.sha: steps[i].script for i in missing}.values():  # type: ignore[union-attr]
            r.script_load(script.script)
        todo = missing  # the others ran: only the steps Redis refused go again
    return results

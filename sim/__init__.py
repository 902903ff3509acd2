"""panel-sim: a loopback provider simulator speaking OpenAI chat + batch and Anthropic Messages +
message batches, with replayed or deterministic answers (a panel's arbiter prompt gets the verdict
its judge's recorded answer implies: `sim.arbiter`), fault and latency knobs, enforced rpm/tpm.

Run `python -m sim --port P [--replay F ...] [--models policies/models.yaml] [--config knobs.yaml]
[--seed N] [--latency-ms N]`; drive it at runtime through `/_sim/{health,config,reset,stats,requests}`
(see `sim.admin`); knob names are the fields of `sim.knobs.Knobs`. Tests use `sim.process.SimProcess`.
"""

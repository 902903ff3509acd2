"""panel-fleet's tier workers: the Celery app, the policy, the quorum chord, provider calls."""

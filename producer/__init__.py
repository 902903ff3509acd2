"""panel-fleet's public face: the wire contract, the client and the `panel` CLI.

Nothing here imports `workers`: a service that submits jobs installs this package's
contract and a Celery client, nothing else.
"""

from producer.contract import SCHEMA_VERSION, CallRecord, Job, Message, Receipt, Result, Verdict
from producer.errors import ContractError, PanelError

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "ContractError",
    "Job",
    "Message",
    "PanelError",
    "Receipt",
    "Result",
    "Verdict",
]

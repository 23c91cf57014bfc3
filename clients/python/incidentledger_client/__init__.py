"""A typed Python client for the incident ledger and its notifier.

Built on the generated gRPC stubs (``incidentledger.v1``), it exposes plain frozen
dataclasses (:mod:`incidentledger_client.types`) and one exception per gRPC code and
useful ErrorInfo reason (:mod:`incidentledger_client.errors`). Every command gets a
request_id (uuid4 hex unless given) and transient failures (UNAVAILABLE,
DEADLINE_EXCEEDED) are retried with the same request_id, with backoff and jitter: the
ledger's commands are idempotent, so a retry returns the original result.

>>> from incidentledger_client import LedgerClient, NotifierClient, VersionConflict
>>> ledger = LedgerClient()          # $LEDGER_ADDRESS, $LEDGER_TOKEN, $LEDGER_TLS_CA
>>> result = ledger.report("Mass gathering", "crowd_gathering", "kota_mukomuko")  # doctest: +SKIP
"""

from incidentledger_client._transport import RetryPolicy, new_request_id
from incidentledger_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CursorExpired,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    HashChainBroken,
    IllegalTransition,
    IncidentNotFound,
    Internal,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    PositionNotRecorded,
    ProjectionLagging,
    RequestIdReused,
    ResourceExhausted,
    TooMuchContention,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)
from incidentledger_client.ledger import LedgerClient
from incidentledger_client.notifier import NotifierClient, Subscription
from incidentledger_client.types import (
    Actor,
    AgencyWorkload,
    Checkpoint,
    CommandResult,
    DeadLetter,
    Decision,
    DecisionInForce,
    Delivery,
    Divergence,
    DurationStats,
    EventFilter,
    Handover,
    Incident,
    IncidentEvent,
    IncidentStatus,
    KecamatanScore,
    Location,
    Notification,
    ProjectionStatus,
    RejectionReason,
    ResponseTimes,
    ScoreReason,
    VerifyReport,
    VulnerabilityMap,
    Webhook,
)

#: The client's version (also the distribution's, see clients/python/pyproject.toml).
__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "Actor",
    "AgencyWorkload",
    "AlreadyExists",
    "Cancelled",
    "Checkpoint",
    "CommandResult",
    "CursorExpired",
    "DataLoss",
    "DeadLetter",
    "DeadlineExceeded",
    "Decision",
    "DecisionInForce",
    "Delivery",
    "Divergence",
    "DurationStats",
    "EventFilter",
    "FailedPrecondition",
    "Handover",
    "HashChainBroken",
    "IllegalTransition",
    "Incident",
    "IncidentEvent",
    "IncidentNotFound",
    "IncidentStatus",
    "Internal",
    "InvalidArgument",
    "KecamatanScore",
    "LedgerClient",
    "LedgerError",
    "Location",
    "NotFound",
    "Notification",
    "NotifierClient",
    "PermissionDenied",
    "PositionNotRecorded",
    "ProjectionLagging",
    "ProjectionStatus",
    "RejectionReason",
    "RequestIdReused",
    "ResourceExhausted",
    "ResponseTimes",
    "RetryPolicy",
    "ScoreReason",
    "Subscription",
    "TooMuchContention",
    "Unauthenticated",
    "Unavailable",
    "VerifyReport",
    "VersionConflict",
    "VulnerabilityMap",
    "Webhook",
    "__version__",
    "new_request_id",
]

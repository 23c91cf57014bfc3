"""Read-side projections of the incident ledger, kept exactly once and rebuildable.

Four views, folded from the notification log into two tables in the ledger's own
database (``proj_incident``: one row per incident; ``proj_decision``: one row per
decision) and one position (``projection_position``):

- **Status board**: each incident's status, severity, category, title, kecamatan
  and desa, lead and supporting agencies, pending handover, escalation level, and
  last change (record time, position, event type). ListIncidents, its filters and
  its orders (oldest or newest report first: a walk either way of the unique index
  on ``seq``, the position of the Reported event) are served from it.
- **Vulnerability map** per kecamatan (below).
- **Decisions in force**: decisions whose validity window covers a time, by
  kecamatan, with who decided and who recorded them.
- **Agency workload and response times** (below).

Exactly once. Each batch of notifications is applied in one transaction that
locks the position row (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
has one writer at a time), checks that the position is still the one the batch was
read after, reads the rows the batch touches, writes them back and moves the position.
A crash or error anywhere rolls all of it back; a process that lost the race for a
batch writes nothing and carries on from the stored position. A process that finds
the row locked by another does not wait for it: it leaves the batch to that process,
and its queries (plain reads, which never wait for the writer) answer from what is
applied.

Rebuild. ``Projections.rebuild()`` or ``python -m services.ledger.projections
rebuild`` empties the tables and applies the whole log again in batches of 5,000
notifications; the result equals the incrementally maintained one (a test checks
it row by row on a large random history).

How rows fold from events (no aggregate is replayed, no hash is checked; events
are decoded straight from their stored JSON, see ``facts.py``):

=====================  =============================================================
Event                  Effect on the incident's row
=====================  =============================================================
Reported               new row: REPORTED, title, category, severity, kecamatan,
                       desa, reporter, reference code ("" before codes
                       existed); reported_at = its record time; occurred_at
Verified               VERIFIED; verified_at (first time only)
Rejected / Merged      REJECTED / MERGED
LeadAssigned           ASSIGNED; lead = agency (removed from supporting);
                       pending handover cleared
SupportingAgencyAdded  agency appended to supporting agencies
HandoverProposed       pending handover to the proposed agency
HandoverAccepted       lead = to_agency (removed from supporting); pending cleared
SeverityAssessed       severity; this event becomes the severity in effect
ActionLogged           RESPONDING when it starts the response; acknowledged_at
                       (first action only)
Escalated              escalation level
DecisionRecorded       new decision row (summary, forum, rationale, deciding
                       agencies, scope kecamatan/desa, validity, recorder)
Resolved               RESOLVED; resolved_at (first time only); closure request
                       cleared
ClosureRequested       close requested
ClosureApproved        CLOSED
Reopened               REOPENED
Corrected              severity, when it corrects the event whose severity is in
                       effect; title, category, location.kecamatan|desa,
                       occurred_at, when it corrects the Reported event; summary,
                       forum, rationale, valid_from, valid_until,
                       location.kecamatan|desa, when it corrects a decision
every event            version, last change time (record time) and position
=====================  =============================================================

Definitions (all times are record times, the server's clock, unless said otherwise):

- **Acknowledged**: the lead agency logged its first action, which moves an
  ASSIGNED incident to RESPONDING. Time to acknowledge = Reported -> first
  ActionLogged; time to verify = Reported -> first Verified; time to resolve =
  Reported -> first Resolved. Response times are grouped by the incident's current
  lead agency (key "" for incidents without one), current severity or current
  category, over incidents that are not REJECTED or MERGED; ``count`` is the
  group's incidents, each milestone has its own count, median and p90 (linear
  interpolation between closest ranks, as numpy's default), in seconds.
- **Workload** at a time ``at`` (incidents reported by then, in their current
  state): an incident is open for its lead agency while ASSIGNED, RESPONDING or
  REOPENED, and for the coordinator while REPORTED or VERIFIED (it waits for
  verification or a lead). Unacknowledged: ASSIGNED (the lead has not acted yet)
  or REPORTED (the coordinator has not triaged it yet). Overdue: open and reported
  longer ago than its severity's target (``overdue_after_hours`` in the reference
  data; defaults critical 1 h, high 4 h, medium 24 h, low 72 h, others 24 h).
  ``supporting``: open incidents (lead's statuses) the agency supports.
- **Vulnerability map** at a time ``at``: for each incident that is not REJECTED
  or MERGED and happened (occurred_at, as reported and corrected) no later than
  ``at``::

      weight = severity_weight[severity] x dimension_weight[IKP dimension of category]
               x 0.5 ^ (age_days / half_life_days)        (age = at - occurred_at)
               x (open_multiplier unless RESOLVED or CLOSED)
      raw    = sum of the weights of the kecamatan's incidents
      score  = 100 x (1 - exp(-raw / scale)), rounded to two decimals
      band   = high if score >= 49.33, medium if score >= 13.47, else low

  The reasons are the incidents with their weights, heaviest first (at most
  ``max_reasons``). All parameters are in the ``vulnerability`` section of the
  reference data; defaults in code: severity weights double with each rank
  (1, 2, 4, 8), dimension weights 1.0, half-life 7 days, open multiplier 1.5,
  scale 20, bands 49.33 / 13.47 (Bawaslu's IKP regency thresholds), 50 reasons.
- **Decisions in force** at ``at``: valid_from <= at < valid_until, with
  corrections applied; filtered by the kecamatan of their scope.
"""

from services.ledger.projections.filters import FILTER_FIELDS, BoardFilter, parse_order
from services.ledger.projections.model import (
    AgencyWorkload,
    BoardRow,
    DecisionInForce,
    KecamatanScore,
    Lag,
    Percentiles,
    RebuildStats,
    ResponseTimes,
    VulnerabilityReason,
)
from services.ledger.projections.service import (
    HistoricalProjections,
    ProjectionReader,
    Projections,
)
from services.ledger.projections.store import NEWEST_START

__all__ = [
    "FILTER_FIELDS",
    "NEWEST_START",
    "AgencyWorkload",
    "BoardFilter",
    "BoardRow",
    "DecisionInForce",
    "HistoricalProjections",
    "KecamatanScore",
    "Lag",
    "Percentiles",
    "ProjectionReader",
    "Projections",
    "RebuildStats",
    "ResponseTimes",
    "VulnerabilityReason",
    "parse_order",
]

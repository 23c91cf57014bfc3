"""ledgerctl's replies to commands name the incident by its reference code, the one officers
type and read out on the phone; --json keeps the ledger's answer as it is."""

from __future__ import annotations

from tests.ledgerctl_support import Ctl


def test_a_commands_reply_names_the_incident_by_its_reference_code(ctl: Ctl) -> None:
    # The replies said "verified incidents/0b6f12..." after the officer typed MKM-7QK3-9V.
    reported = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")
    name, code = reported["incident"], reported["reference"]
    assert code, reported
    out = ctl.ok("kesbangpol", "report", "Second rally", "crowd_gathering", "ipuh")
    assert out.startswith("reported ") and "incidents/" not in out, out
    replies = [
        ctl.ok("desk_pilkada", "verify", code),
        ctl.ok("desk_pilkada", "assign", code.lower(), "polres"),
        # A prefix is found in the listing, which carries the code too.
        ctl.ok("polres", "act", name.removeprefix("incidents/")[:8], "Patrol sent"),
        ctl.ok("polres", "escalate", code, "critical"),
        ctl.ok("polres", "resolve", code, "Crowd dispersed"),
        ctl.ok("polres", "close", "request", code),
    ]
    for reply in replies:
        assert f" {code} (version " in reply and "incidents/" not in reply, reply
    # Named by its full id, nothing was looked up: the reply names it so, with no extra call.
    assert f" {name} (version " in ctl.ok("desk_pilkada", "close", "approve", name)
    reopened = ctl.json("desk_pilkada", "reopen", code, "Crowd back")
    assert reopened["incident"] == name and reopened["reference"] == "", reopened

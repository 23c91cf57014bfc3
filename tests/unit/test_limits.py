"""Per-agency limits: the token bucket and the stream counter, on a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from google.rpc import error_details_pb2, status_pb2

from services.common import limits
from services.common.config import ConfigError, LedgerSettings, LimitSettings
from services.common.errors import AuthThrottled, RateLimited, TooManyStreams
from services.common.grpc_errors import to_grpc_status
from services.common.limits import (
    AuthThrottle,
    Limits,
    RateLimiter,
    StreamCounter,
    peer_address,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_admits_its_burst_then_refuses() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 5, clock)
    assert [limiter.try_acquire("polres") for _ in range(5)] == [0.0] * 5
    assert limiter.try_acquire("polres") == pytest.approx(0.1)


def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 5, clock)
    for _ in range(5):
        limiter.try_acquire("polres")
    clock.advance(0.25)  # 2.5 tokens
    assert limiter.try_acquire("polres") == 0.0
    assert limiter.try_acquire("polres") == 0.0
    assert limiter.try_acquire("polres") == pytest.approx(0.05)
    clock.advance(3600)  # never more than the burst
    assert [limiter.try_acquire("polres") for _ in range(6)].count(0.0) == 5


def test_a_refused_request_costs_no_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock)
    assert limiter.try_acquire("kpu") == 0.0
    for _ in range(10):
        assert limiter.try_acquire("kpu") > 0
    clock.advance(1.0)
    assert limiter.try_acquire("kpu") == 0.0


def test_each_agency_has_its_own_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock)
    assert limiter.try_acquire("polres") == 0.0
    assert limiter.try_acquire("polres") == 0.0
    assert limiter.try_acquire("polres") > 0
    assert limiter.try_acquire("bawaslu") == 0.0


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock)
    assert limiter.try_acquire("kpu") == 0.0
    clock.advance(-5.0)
    assert limiter.try_acquire("kpu") == pytest.approx(1.0)


def test_rate_zero_is_no_limit() -> None:
    limiter = RateLimiter(0.0, 0, FakeClock())
    assert not limiter.enabled
    assert all(limiter.try_acquire("polres") == 0.0 for _ in range(10_000))


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1), (1.0, -1), (1.0, 0)])
def test_nonsense_rates_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_concurrent_callers_never_take_more_than_the_burst() -> None:
    limiter = RateLimiter(1e-9, 100, FakeClock())
    admitted: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = sum(1 for _ in range(50) if limiter.try_acquire("polres") == 0.0)
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 100


def test_stream_slots_are_counted_per_agency_and_released_once() -> None:
    streams = StreamCounter(2)
    first = streams.try_acquire("polres")
    second = streams.try_acquire("polres")
    assert first is not None and second is not None
    assert streams.try_acquire("polres") is None
    assert streams.try_acquire("kodim") is not None
    first.release()
    first.release()  # idempotent: frees one slot, not two
    assert streams.held("polres") == 1
    third = streams.try_acquire("polres")
    assert third is not None
    assert streams.try_acquire("polres") is None
    second.release()
    third.release()
    assert streams.held("polres") == 0


def test_stream_limit_zero_is_no_limit() -> None:
    streams = StreamCounter(0)
    assert all(streams.try_acquire("polres") is not None for _ in range(1000))


def test_limits_raise_the_documented_errors() -> None:
    clock = FakeClock()
    limits = Limits(LimitSettings(rate_per_second=2.0, burst=3, max_streams_per_agency=1), clock)
    slot = limits.open_stream("polres")
    with pytest.raises(TooManyStreams) as streams_error:
        limits.open_stream("polres")
    assert streams_error.value.code == "RESOURCE_EXHAUSTED"
    assert streams_error.value.metadata == {"agency": "polres", "limit": "1"}
    limits.admit("polres")  # the refused stream took the second token
    with pytest.raises(RateLimited) as rate_error:
        limits.admit("polres")
    assert rate_error.value.code == "RESOURCE_EXHAUSTED"
    assert rate_error.value.reason == "RATE_LIMITED"
    assert rate_error.value.metadata == {"agency": "polres", "limit": "2", "burst": "3"}
    assert rate_error.value.retry_delay == pytest.approx(0.5)
    clock.advance(0.5)
    slot.release()
    assert limits.open_stream("polres") is not None


def test_rate_limited_status_carries_retry_info() -> None:
    status = to_grpc_status(RateLimited("kpu", 5.0, 10, 0.2), "ledger.incidentledger")
    assert status.code.name == "RESOURCE_EXHAUSTED"
    (packed,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    decoded = status_pb2.Status.FromString(packed)
    kinds = [detail.TypeName() for detail in decoded.details]
    assert kinds == ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]
    retry = error_details_pb2.RetryInfo()
    decoded.details[1].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 200_000_000


def test_rate_limit_is_off_in_development_and_on_in_production() -> None:
    assert LedgerSettings.from_env({}).limits == LimitSettings(0.0, 0, 16)
    production = LimitSettings.from_env({}, production=True)
    assert production == LimitSettings(200.0, 400, 16)
    tuned = LimitSettings.from_env(
        {
            "LEDGER_RATE_LIMIT_PER_SECOND": "50",
            "LEDGER_RATE_LIMIT_BURST": "60",
            "LEDGER_MAX_STREAMS_PER_AGENCY": "4",
        },
        production=False,
    )
    assert tuned == LimitSettings(50.0, 60, 4)
    assert LimitSettings.from_env({"LEDGER_RATE_LIMIT_PER_SECOND": "0"}, production=True) == (
        LimitSettings(0.0, 0, 16)
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEDGER_RATE_LIMIT_PER_SECOND": "-1"}, "must not be negative"),
        ({"LEDGER_RATE_LIMIT_PER_SECOND": "fast"}, "must be a number"),
        ({"LEDGER_RATE_LIMIT_BURST": "0"}, "must be at least 1"),
        ({"LEDGER_MAX_STREAMS_PER_AGENCY": "-2"}, "must be at least 0"),
    ],
)
def test_bad_limit_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LimitSettings.from_env(env, production=False)


# ------------------------------------------------------- failed authentications

PEER = "ipv4:10.0.0.7:53412"


def throttle(clock: FakeClock, failures: int = 5, window: float = 60.0) -> AuthThrottle:
    return AuthThrottle(
        LimitSettings(auth_max_failures=failures, auth_window_seconds=window), clock
    )


def test_a_peer_is_refused_for_a_window_after_too_many_failures() -> None:
    clock = FakeClock()
    guard = throttle(clock)
    for n in range(5):
        guard.check(PEER, f"guess-{n:04d}-{'x' * 30}")
        guard.failed(PEER, f"guess-{n:04d}-{'x' * 30}")
    clock.advance(10)
    # Another port of the same address, valid credentials: refused all the same.
    with pytest.raises(AuthThrottled) as caught:
        guard.check("ipv4:10.0.0.7:60001", "a-valid-token")
    assert caught.value.key == "peer"
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    assert caught.value.reason == "AUTH_THROTTLED"
    assert caught.value.retry_delay == pytest.approx(50.0)
    guard.check("ipv4:10.0.0.8:53412", "a-valid-token")  # another machine is not
    clock.advance(50)
    guard.check(PEER, "a-valid-token")  # the window is over: not locked out for ever


def test_a_token_prefix_is_refused_from_every_peer_after_too_many_failures() -> None:
    clock = FakeClock()
    guard = throttle(clock)
    for n in range(5):
        guard.failed(f"ipv4:10.0.1.{n}:1000", f"abcdefgh{n}")
    with pytest.raises(AuthThrottled) as caught:
        guard.check("ipv4:10.0.2.1:1000", "abcdefgh-another-guess")
    assert caught.value.key == "token"
    guard.check("ipv4:10.0.2.1:1000", "ijklmnop")


def test_failures_spread_over_windows_are_not_throttled() -> None:
    clock = FakeClock()
    guard = throttle(clock, failures=3, window=10.0)
    for _ in range(10):
        guard.failed(PEER, None)
        guard.failed(PEER, None)
        clock.advance(10.0)
        guard.check(PEER, None)


class RecordingLog:
    """Stands in for a module's structlog logger: records each line's event and fields."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def write(event: str, **fields: object) -> None:
            self.lines.append({"event": event, "level": level, **fields})

        return write


def test_one_log_line_per_burst_not_per_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    guard = throttle(clock, failures=5, window=60.0)
    recording = RecordingLog()
    monkeypatch.setattr(limits, "log", recording)
    for n in range(200):
        try:
            guard.check(PEER, f"{n:08d}guess")
        except AuthThrottled:
            continue
        guard.failed(PEER, f"{n:08d}guess")
    clock.advance(60.0)
    for n in range(200):  # a second burst, after the first block ended
        try:
            guard.check(PEER, f"{n:08d}again")
        except AuthThrottled:
            continue
        guard.failed(PEER, f"{n:08d}again")
    throttled = [entry for entry in recording.lines if entry["event"] == "auth.throttled"]
    assert len(throttled) == 2
    assert throttled[0]["peer"] == "ipv4:10.0.0.7"
    assert "token" not in throttled[0]  # each guess had its own prefix


def test_memory_is_bounded_whatever_the_number_of_peers_and_prefixes() -> None:
    guard = AuthThrottle(
        LimitSettings(auth_max_failures=3, auth_window_seconds=60.0, auth_max_keys=100),
        FakeClock(),
    )
    for n in range(5000):
        guard.failed(f"ipv4:10.{n // 256 % 256}.{n % 256}.1:1", f"{n:08d}rest")
    assert len(guard.peers) <= 100
    assert len(guard.tokens) <= 100


def test_the_throttle_is_off_with_zero_failures() -> None:
    guard = throttle(FakeClock(), failures=0)
    for _ in range(100):
        guard.failed(PEER, "guess")
    guard.check(PEER, "guess")


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:10.0.0.7:53412", "ipv4:10.0.0.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "ipv6:2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff::1]:9", "ipv6:2001:db8:1:2::/64"),
        ("ipv6:[::ffff:10.0.0.7]:53412", "ipv4:10.0.0.7"),
        ("unix:/run/ledger.sock", "unix"),
    ],
)
def test_peers_are_keyed_by_address_without_the_port(peer: str, key: str) -> None:
    assert peer_address(peer) == key


def test_auth_throttle_settings() -> None:
    default = LimitSettings.from_env({}, production=False)
    assert (default.auth_max_failures, default.auth_window_seconds) == (30, 60.0)
    tuned = LimitSettings.from_env(
        {
            "LEDGER_AUTH_MAX_FAILURES": "10",
            "LEDGER_AUTH_WINDOW_SECONDS": "300",
            "LEDGER_AUTH_THROTTLE_KEYS": "500",
        },
        production=True,
    )
    assert (tuned.auth_max_failures, tuned.auth_window_seconds, tuned.auth_max_keys) == (
        10,
        300.0,
        500,
    )
    with pytest.raises(ConfigError, match="LEDGER_AUTH_WINDOW_SECONDS must be positive"):
        LimitSettings.from_env({"LEDGER_AUTH_WINDOW_SECONDS": "0"}, production=False)

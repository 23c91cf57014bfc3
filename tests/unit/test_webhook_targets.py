"""Where a webhook may point: URL checks and the address policy (no network needed)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import pytest

from services.common.config import ConfigError, NotifierSettings
from services.common.errors import InvalidArgument
from services.notifier.targets import (
    Target,
    TargetPolicy,
    TargetRefusedError,
    parse_target,
    pinned_url,
)

DEFAULT = TargetPolicy()
INTERNAL = TargetPolicy([ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("::1/128")])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/",  # a port out of range: an OverflowError at delivery before
        "http://127.0.0.1:0/",
        "http://127.0.0.1:port/",
        "http://[::1",  # a ValueError in urlsplit: INTERNAL before
        "http://[not-an-address]/",
        "ftp://example.com/hook",
        "https:///no-host",
        "http://agency:hunter2-s3cret@example.com/hook",
        "http://token@example.com/hook",
        "http://exa mple.com/hook",
    ],
)
def test_malformed_urls_are_refused_at_registration_with_the_field_named(url: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        DEFAULT.check_registration(url)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert refused.value.reason == "INVALID_FIELD"
    assert refused.value.metadata == {"field": "url"}
    assert "hunter2" not in str(refused.value), "credentials are never echoed back"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://127.1.2.3/hook",
        "http://localhost:8080/hook",  # a name that resolves to loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://10.0.0.5/hook",
        "http://172.16.3.4/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
        "http://0.0.0.0:8080/hook",
        "http://224.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # loopback, written as IPv6
        "http://[::ffff:a9fe:a9fe]/hook",  # 169.254.169.254, written as IPv6
    ],
)
def test_internal_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        DEFAULT.check_registration(url)
    assert refused.value.metadata == {"field": "url"}
    assert "NOTIFIER_WEBHOOK_ALLOW_NETWORKS" in str(refused.value)


def test_public_targets_are_accepted() -> None:
    for url in ["https://93.184.216.34/hook", "http://[2606:4700::1111]:8443/x?y=1"]:
        assert DEFAULT.check_registration(url).url == url


def test_the_allow_list_admits_its_networks_and_nothing_else() -> None:
    assert INTERNAL.check_registration("http://10.20.3.4:9000/hook").port == 9000
    assert INTERNAL.check_registration("http://[::1]/hook").host == "::1"
    for url in ["http://10.21.0.1/hook", "http://127.0.0.1/hook", "http://169.254.169.254/"]:
        with pytest.raises(InvalidArgument):
            INTERNAL.check_registration(url)


def test_at_delivery_every_address_of_a_name_is_checked_and_the_checked_one_is_used() -> None:
    loopback = TargetPolicy([ipaddress.ip_network("127.0.0.0/8")])
    target = parse_target("http://localhost:8080/hook?x=1")
    with pytest.raises(TargetRefusedError):
        asyncio.run(DEFAULT.resolve(target))
    address = asyncio.run(loopback.resolve(target))
    assert address == ipaddress.ip_address("127.0.0.1")
    assert pinned_url(target, address) == (
        "http://127.0.0.1:8080/hook?x=1",
        {"Host": "localhost:8080"},
    )
    literal = Target("https://[::1]/h", "https", "::1", 443, ipaddress.ip_address("::1"))
    assert pinned_url(literal, ipaddress.ip_address("::1"))[0] == "https://[::1]:443/h"
    with pytest.raises(TargetRefusedError):
        asyncio.run(DEFAULT.resolve(parse_target("http://no-such-host.invalid/hook")))


def test_the_allow_list_setting_takes_cidrs_and_refuses_anything_else() -> None:
    env = {"NATS_URL": "nats://127.0.0.1:4222"}
    assert NotifierSettings.from_env(env).webhooks.allow_networks == ()
    settings = NotifierSettings.from_env(
        {**env, "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "10.20.0.0/16, 127.0.0.1,fd00::/8"}
    )
    assert settings.webhooks.allow_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(ConfigError, match="NOTIFIER_WEBHOOK_ALLOW_NETWORKS"):
        NotifierSettings.from_env({**env, "NOTIFIER_WEBHOOK_ALLOW_NETWORKS": "intranet"})


def test_a_ca_file_that_does_not_load_stops_the_start(tmp_path: Path) -> None:
    env = {"NATS_URL": "nats://127.0.0.1:4222", "LEDGER_DATA_DIR": str(tmp_path)}
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path in (not_pem, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match="NOTIFIER_WEBHOOK_CA_FILE"):
            NotifierSettings.from_env({**env, "NOTIFIER_WEBHOOK_CA_FILE": str(path)})
    context = NotifierSettings.from_env(env).webhooks.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

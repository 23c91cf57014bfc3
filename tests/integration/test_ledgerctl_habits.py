"""ledgerctl behaves like its peers (kubectl, gh): global options anywhere, -h, --version,
completion, JSON errors, a strict config file with contexts and a view of the settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from incidentledger_client import __version__
from incidentledger_client.cli import main
from services.common.config import PROJECT_ROOT
from tests.ledgerctl_support import Ctl, without_server_log

ROOT = Path(__file__).resolve().parents[2]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    out = without_server_log(captured.out)
    return code, (json.loads(out) if out.strip() else None), captured.err


def test_global_options_go_anywhere_on_the_line(
    ctl: Ctl, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = str(ctl.tokens)
    capsys.readouterr()
    code = main(
        [
            "report",
            "Rally",
            "crowd_gathering",
            "ipuh",
            "--json",
            "--address",
            ctl.ledger.address,
            "-a",
            "kesbangpol",
            f"--tokens-file={tokens}",
        ]
    )
    out = without_server_log(capsys.readouterr().out)
    assert code == 0, out
    name = json.loads(out)["incident"]
    code = main(
        [
            "show",
            name,
            "-a",
            "polres",
            "--address",
            ctl.ledger.address,
            "--tokens-file",
            tokens,
            "--json",
        ]
    )
    shown = json.loads(without_server_log(capsys.readouterr().out))
    assert code == 0 and shown["incident"]["name"] == name
    # A command's own option of the same name stays the command's: export --agency filters.
    code = main(
        [
            "audit",
            "export",
            "-",
            "--agency",
            "polres",
            "-a",
            "inspektorat",
            "--address",
            ctl.ledger.address,
            "--tokens-file",
            tokens,
        ]
    )
    assert code == 0 and without_server_log(capsys.readouterr().out).strip() == ""


def test_help_version_and_examples_on_groups(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["-h"]) == 0
    assert "Usage: ledgerctl" in capsys.readouterr().out
    assert main(["show", "-h"]) == 0
    assert "Example: ledgerctl show" in capsys.readouterr().out
    for group in ("handover", "close", "webhooks", "audit", "config"):
        assert main([group, "--help"]) == 0, group
        assert "Example: ledgerctl" in capsys.readouterr().out, group
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ledgerctl {__version__}"
    # --help and --version need no configuration: a broken config file does not stop them.
    assert main(["--config", "/nonexistent.toml", "list", "-h"]) == 0


@pytest.mark.parametrize(
    ("shell", "env", "expected"),
    [
        ("bash", {"COMP_WORDS": "ledgerctl webh", "COMP_CWORD": "1"}, "webhooks"),
        ("zsh", {"_TYPER_COMPLETE_ARGS": "ledgerctl audit ver"}, "verify"),
        (
            "fish",
            {"_TYPER_COMPLETE_FISH_ACTION": "get-args", "_TYPER_COMPLETE_ARGS": "ledgerctl close "},
            "approve",
        ),
    ],
)
def test_shell_completion_scripts_and_answers(
    shell: str, env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "_LEDGERCTL_COMPLETE" in script and "ledgerctl" in script
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")])
    answered = subprocess.run(
        [sys.executable, "-m", "incidentledger_client.cli"],
        env={
            **os.environ,
            "PYTHONPATH": pythonpath,
            "_LEDGERCTL_COMPLETE": f"complete_{shell}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answered.returncode == 0, answered.stderr
    assert expected in answered.stdout, answered.stdout


def test_errors_are_json_objects_on_stderr_with_json(
    ctl: Ctl, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_json(
        capsys,
        "--address",
        ctl.ledger.address,
        "--tokens-file",
        str(ctl.tokens),
        "show",
        "incidents/00000000-0000-4000-8000-000000000000",
        "-a",
        "polres",
        "--json",
    )
    assert code == 3 and out is None
    error = json.loads(err)["error"]
    assert error["code"] == "NOT_FOUND" and error["exit_code"] == 3
    assert error["reason"] and isinstance(error["metadata"], dict)
    code, out, err = run_json(capsys, "lst", "--json")
    assert code == 2 and json.loads(err)["error"]["code"] == "USAGE"
    assert "list" in json.loads(err)["error"]["message"]


def test_an_unknown_config_key_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ledgerctl.toml"
    config.write_text('adress = "10.9.9.9:50051"\n')
    capsys.readouterr()
    assert main(["--config", str(config), "--token", "t", "list"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'adress'" in err and "did you mean 'address'" in err
    config.write_text('[contexts.prod]\nadres = "x:1"\n')
    assert main(["--config", str(config), "--token", "t", "list"]) == 2
    assert "'adres'" in capsys.readouterr().err


def test_config_view_says_where_each_setting_came_from_and_contexts_switch_ledgers(
    ctl: Ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ledgerctl.toml"
    config.write_text(
        'current_context = "training"\nzone = "Asia/Makassar"\n'
        f'[contexts.training]\naddress = "{ctl.ledger.address}"\n'
        f'tokens_file = "{ctl.tokens}"\nagency = "kesbangpol"\n'
        '[contexts.elsewhere]\naddress = "127.0.0.1:1"\ntimeout = 0.5\n'
    )
    monkeypatch.setenv("LEDGERCTL_CONFIG", str(config))
    monkeypatch.setenv("NOTIFIER_ADDRESS", "127.0.0.1:6000")
    code, view, _ = run_json(capsys, "config", "view", "--timeout", "3", "--json")
    assert code == 0 and isinstance(view, dict)
    settings = view["settings"]
    assert view["context"] == "training"
    assert settings["address"] == {
        "value": ctl.ledger.address,
        "source": f"config {config} [contexts.training]",
    }
    assert settings["zone"]["source"] == f"config {config}"
    assert settings["notifier_address"]["source"] == "env NOTIFIER_ADDRESS"
    assert settings["timeout"] == {"value": 3.0, "source": "flag --timeout"}
    assert settings["tls_ca"]["source"] == "default"
    assert not str(settings["token"]["value"]).startswith(ctl.ledger.tokens["kesbangpol"])
    capsys.readouterr()
    assert main(["config", "view"]) == 0
    human = capsys.readouterr().out
    assert "[contexts.training]" in human and "env NOTIFIER_ADDRESS" in human
    # The current context talks to the training ledger; --context picks another.
    code, reported, _ = run_json(capsys, "report", "From a context", "flood", "ipuh", "--json")
    assert code == 0 and isinstance(reported, dict) and reported["version"] == 1
    assert main(["--context", "elsewhere", "--token", "t", "list"]) == 6
    code, _, err = run_json(capsys, "--context", "prdo", "list")
    assert code == 2 and "no context 'prdo'" in err
    # use-context switches the current one in the file.
    assert main(["config", "use-context", "elsewhere"]) == 0
    assert 'current_context = "elsewhere"' in config.read_text()
    code, view, _ = run_json(capsys, "config", "view", "--json")
    assert isinstance(view, dict) and view["context"] == "elsewhere"


def test_make_venv_puts_ledgerctl_on_the_venvs_path(tmp_path: Path) -> None:
    """The README's examples run as written: `ledgerctl` is a command of the project's venv
    (the one running these tests under `make test`), working without PYTHONPATH, anywhere."""
    command = Path(sys.executable).parent / "ledgerctl"
    assert command.is_file(), f"{command} is missing: make venv installs it"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{command.parent}{os.pathsep}{env.get('PATH', '')}"
    ran = subprocess.run(
        ["ledgerctl", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"ledgerctl {__version__}"


def test_make_run_and_make_demo_install_ledgerctl_too() -> None:
    """A newcomer's first command is `make run`; the README's ledgerctl examples follow it.
    ledgerctl is a console script of the project, which `make venv` installs (the stamp)."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^ledgerctl = ", (PROJECT_ROOT / "pyproject.toml").read_text(), re.M)
    for target in ("venv", "run", "demo"):
        rule = re.search(rf"^{target}:([^#\n]*)", makefile, re.MULTILINE)
        assert rule is not None, target
        assert "$(PROJECT_STAMP)" in rule.group(1), f"make {target} does not install ledgerctl"


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_closed_output_ends_ledgerctl_quietly(ctl: Ctl, output: str) -> None:
    # As in `ledgerctl show X | head -1` once head has its line: the reader has gone before
    # ledgerctl writes (the pipe's reading end closed first, so the run does not race head).
    name = ctl.json("kesbangpol", "report", "Rally", "crowd_gathering", "ipuh")["incident"]
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "gen"), str(ROOT / "clients" / "python")])
    reading, writing = os.pipe()
    os.close(reading)
    try:
        ran = subprocess.run(
            [
                *(sys.executable, "-m", "incidentledger_client.cli"),
                *("--address", ctl.ledger.address, "--tokens-file", str(ctl.tokens)),
                *("-a", "polres", "show", name),
                *(["--json"] if output == "json" else []),
            ],
            env={**os.environ, "PYTHONPATH": pythonpath},
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writing)
    # The status a shell gives a tool that SIGPIPE ended (cat, git log), and not a word.
    assert (ran.returncode, ran.stderr) == (141, ""), ran.stderr

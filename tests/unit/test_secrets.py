"""Secrets stay out of logs and crash output; references resolve or fail naming the field;
an exposed config file is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from gateway.configload import load_config
from gateway.errors import ConfigError
from gateway.logs import JsonFormatter, SecretMasker
from gateway.secrets import config_secret_values, exposed_config_warning
from tests.unit.test_logs import capture

ROOT = Path(__file__).parents[2]
TOKEN = "mr_0a1b2c3d4e5f_Zm9vYmFyYmF6cXV4cXV1eHF1dXpxdXV4cXV1eHF1dXo"


def _config(tmp_path: Path, **extra: object) -> Path:
    data = {
        "gateway": {"id": "gw", "site": "s"},
        "store": {"path": "gw.db"},
        "uplinks": [
            {
                "type": "mqtt",
                "name": "central",
                "host": "127.0.0.1",
                "username": "gw",
                "password": "${env:MILLRACE_TEST_PW}",
            },
            {
                "type": "influx",
                "name": "tsdb",
                "url": "http://127.0.0.1:8086",
                "org": "o",
                "bucket": "b",
                "token": "${file:influx.token}",
            },
        ],
        "secrets": {"inline": "inline-secret-value"},
        **extra,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_references_resolve_and_every_secret_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILLRACE_TEST_PW", "env-password-1")
    (tmp_path / "influx.token").write_text("file-token-2\n")
    loaded = load_config(_config(tmp_path))
    up = loaded.config.uplinks
    assert up[0].password.get_secret_value() == "env-password-1"  # type: ignore[union-attr]
    assert up[1].token.get_secret_value() == "file-token-2"  # type: ignore[union-attr]
    assert set(config_secret_values(loaded.config)) == {
        "env-password-1",
        "file-token-2",
        "inline-secret-value",
    }
    # inline values are masked too, not only referenced ones
    assert "inline-secret-value" in loaded.secret_values
    dumped = repr(loaded.config) + json.dumps(loaded.config.model_dump(mode="json"))
    for s in ("env-password-1", "file-token-2", "inline-secret-value"):
        assert s not in dumped


def test_missing_references_name_the_field_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MILLRACE_TEST_PW", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path))
    text = "\n".join(err.value.problems)
    assert "uplinks.0.password: environment variable MILLRACE_TEST_PW is not set" in text
    assert "uplinks.1.token: cannot read secret file" in text and "influx.token" in text


def test_config_readable_by_others_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("gateway: {id: gw, site: s}\n")
    path.chmod(0o644)
    warning = exposed_config_warning(path)
    assert warning is not None and "readable by group/others (mode 644)" in warning
    path.chmod(0o600)
    assert exposed_config_warning(path) is None
    assert exposed_config_warning(tmp_path / "absent.yaml") is None


def test_log_lines_mask_secrets_and_bearer_tokens() -> None:
    logger, stream = capture(JsonFormatter(), SecretMasker(["env-password-1"]))
    logger.info("request", extra={"authorization": f"Bearer {TOKEN}", "peer": "10.0.0.9"})
    logger.warning("token %s refused; password env-password-1", TOKEN)
    logger.info("opaque", extra={"hdr": "Authorization: Bearer abcdefgh12345678"})
    out = stream.getvalue()
    assert TOKEN not in out and "env-password-1" not in out and "abcdefgh12345678" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["authorization"] == "Bearer ***" and lines[0]["peer"] == "10.0.0.9"
    assert lines[1]["msg"] == "token *** refused; password ***"


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MILLRACE_TEST_PW": "env-password-1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


def test_cli_crash_output_is_masked(tmp_path: Path) -> None:
    """`millrace run` hits a bug whose message carries a password and a token: the
    traceback is printed, the secrets are not."""
    (tmp_path / "influx.token").write_text("file-token-2")
    cfg = _config(tmp_path)
    proc = _run(
        f"""
        import sys
        from gateway import cli

        async def boom(loaded, *a, **k):
            pw = loaded.config.uplinks[0].password.get_secret_value()
            tok = loaded.config.uplinks[1].token.get_secret_value()
            raise RuntimeError(f"connect failed: user gw password {{pw}} token {{tok}} {TOKEN!r}")

        cli._serve = boom
        sys.exit(cli.main(["run", "-c", {str(cfg)!r}]))
        """,
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError: connect failed" in proc.stderr
    for s in ("env-password-1", "file-token-2", TOKEN):
        assert s not in proc.stderr + proc.stdout
    assert "readable by group/others" in proc.stderr  # the file was written 0644


def test_uncaught_exceptions_in_any_thread_are_masked(tmp_path: Path) -> None:
    proc = _run(
        """
        import threading
        from gateway.logs import MASKER
        from gateway.secrets import install_crash_redaction

        install_crash_redaction()
        MASKER.add(["s3cret-value"])
        def fail():
            raise KeyError("s3cret-value")

        t = threading.Thread(target=fail)
        t.start()
        t.join()
        raise ValueError("main thread s3cret-value")
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    assert "KeyError: '***'" in proc.stderr and "ValueError: main thread ***" in proc.stderr
    assert "s3cret-value" not in proc.stderr

"""deploy.profile: the stdlib profile reader used by `make up` on hosts without the venv."""

from __future__ import annotations

from pathlib import Path

from deploy.profile import Profile, read
from env.settings import ENV_DIR, read_profile


def test_read_matches_python_dotenv_on_every_profile() -> None:
    for path in ENV_DIR.glob("*.env"):
        expected = {k: v for k, v in read_profile(path).items() if v is not None}
        assert read(path) == expected, path.name


def test_quotes_comments_export(tmp_path: Path) -> None:
    f = tmp_path / "p.env"
    f.write_text("# c\nexport A=\"x y\"\nB='1'\n\nC = 3\nnot a line\n")
    assert read(f) == {"A": "x y", "B": "1", "C": "3"}


def test_environment_wins_and_urls(tmp_path: Path) -> None:
    f = tmp_path / "p.env"
    f.write_text("GATEWAY_PORT=9000\nVLLM_ENGINE_READY_TIMEOUT_S=1800\nWARMUP_BUDGET_S=300\n")
    p = Profile(f, environ={"GATEWAY_PORT": "9100"})
    assert p.gateway_url == "http://127.0.0.1:9100"  # 0.0.0.0 default -> loopback
    assert p.up_timeout_s() == 1800 + 300 + 120
    assert Profile(f, environ={"STACK_GATEWAY_HOST": "10.1.2.3"}).gateway_url.startswith(
        "http://10.1.2.3:9000"
    )


def test_secret_files_only_off_cpu() -> None:
    assert Profile(ENV_DIR / "cpu.env", environ={}).secret_files() == {}
    tpu = Profile(ENV_DIR / "v6e4-gemma4-26b.env", environ={}).secret_files()
    assert {p.name for p in tpu.values()} == {"hf_token", "api_keys"}

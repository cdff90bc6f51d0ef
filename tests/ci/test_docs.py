"""Docs that a new maintainer follows literally, checked against the files they describe."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from env.settings import ENV_DIR, read_profile

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEPLOY = (REPO / "docs" / "deploy.md").read_text()
WARMUP_README = (REPO / "warmup" / "README.md").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_readme_quickstart_queries_the_model_its_profile_serves() -> None:
    quickstart = README.split("\n---\n", 1)[0]
    profiles = set(re.findall(r"make up PROFILE=([\w.-]+)", quickstart))
    assert len(profiles) == 1, profiles
    served = read_profile(ENV_DIR / f"{profiles.pop()}.env")["ENGINE_SERVED_MODEL_NAME"]
    models = re.findall(r'"model": "([^"]+)"', quickstart) + re.findall(
        r'model="([^"]+)"', quickstart
    )
    assert models and set(models) == {served}, (models, served)


def test_deploy_doc_names_each_dockerfiles_base_argument() -> None:
    dockerfiles = [*REPO.glob("entrypoint/Dockerfile.*"), *REPO.glob("deploy/Dockerfile.*")]
    assert dockerfiles
    section = DEPLOY.split("## Images without a registry", 1)[1].split("\n## ", 1)[0]
    for path in dockerfiles:
        arg = re.search(r"^FROM \$\{(\w+)\}", path.read_text(), flags=re.MULTILINE)
        assert arg, f"{path} does not build FROM an ARG"
        rel = path.relative_to(REPO).as_posix()
        at = section.find(f"`{rel}`")
        assert at >= 0, f"{rel} not described in docs/deploy.md's image section"
        documented = re.search(r"`ARG (\w+)`", section[at:])  # the first one named after it
        assert documented and documented.group(1) == arg.group(1), (rel, arg.group(1))


def test_warmup_readme_quotes_the_compose_service() -> None:
    service = COMPOSE["services"]["warmup"]
    command = "[" + ", ".join(service["command"]) + "]"
    assert f"`command: {command}`" in WARMUP_README
    assert "--profile" not in service["command"]
    assert set(service["depends_on"]) == {"engine"}
    assert service["depends_on"]["engine"]["condition"] == "service_healthy"
    assert "does\n**not** wait for the gateway" in WARMUP_README


def test_report_path_under_compose_is_the_one_documented() -> None:
    path = COMPOSE["services"]["warmup"]["environment"]["WARMUP_REPORT_PATH"]
    for doc in (README, WARMUP_README):
        assert path in doc
        assert ".cache/warmup/report.json" in doc

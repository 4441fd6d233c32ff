"""The container image (deploy/Dockerfile).

The real check is ``deploy/build-image``: it builds the image with podman
and checks its contents in a chroot (``noteburst --version``,
``noteburst db upgrade`` on SQLite, a notebook on a real kernel, no build
tools).  It needs root, podman and mmdebstrap, so ``.ci/run`` runs it
beside the test suite, on every run (about 25-50 s once the base image
and uv's cache exist on the machine, about 2 minutes cold).

These tests read the files the build uses, so that they cannot drift apart
unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BUILD_IMAGE = ROOT / "deploy" / "build-image"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    starts = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    return steps[starts[-1] :]


def test_final_stage_runs_noteburst_as_uid_1000_without_healthcheck() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "base AS runtime")
    keywords = [keyword for keyword, _ in stage]
    assert ("ENTRYPOINT", '["noteburst"]') in stage
    assert ("USER", "1000:1000") in stage
    assert "WORKDIR" in keywords
    assert "HEALTHCHECK" not in {keyword for keyword, _ in instructions()}
    # Only the installed environment comes from the builder: not uv, not
    # the sources.
    copies = [rest for keyword, rest in stage if keyword == "COPY"]
    assert copies == ["--from=builder /opt/noteburst/venv /opt/noteburst/venv"]


def test_labels_are_the_oci_ones_with_a_version_argument() -> None:
    labels = " ".join(rest for keyword, rest in final_stage() if keyword == "LABEL")
    for name in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{name}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_installs_from_the_lock_without_dev_dependencies() -> None:
    runs = [rest for keyword, rest in instructions() if keyword == "RUN"]
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs
    for run in syncs:
        assert "--locked" in run
        assert "--no-dev" in run
        assert "--no-editable" in run


def test_builder_uv_is_the_version_the_scripts_use() -> None:
    env = (ROOT / "scripts" / "_env.sh").read_text()
    wanted = re.search(r"^UV_VERSION=(\S+)$", env, re.MULTILINE)
    assert wanted is not None
    pinned = (ROOT / "deploy" / "uv-requirements.txt").read_text()
    assert f"uv=={wanted.group(1)} " in pinned


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for keyword, rest in instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert source.rstrip("/") in allowed, source
            assert (ROOT / source).exists(), source

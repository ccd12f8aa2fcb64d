"""The package-bento component builds a Bento offline for a registered LMN model (2 shard models), records
its tag next to the production pointer, and the Bento served by tag answers /rank like the offline model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from kfp import dsl
from test_serving import NOW, offline_logits, world  # noqa: F401  (the module-scoped world fixture)

from components.package_bento import package_bento
from longrec.serving.package import read_bento_record
from longrec.serving.process import ServeProcess, free_port

pytestmark = pytest.mark.slow


def test_package_bento_component_then_serve_the_bento_by_tag(world, tmp_path: Path) -> None:  # noqa: F811
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    (events_dir / "dataset.json").write_text(json.dumps({"name": "demo", "fingerprint": "x"}))
    registry = world["root"] / "registry"
    bento_tag = package_bento.python_func(
        registered_tag=world["tags"]["lmn"],
        events=dsl.Dataset(uri=str(events_dir)),
        feature_repo=dsl.Artifact(uri=str(world["repo"])),
        registry_dir=str(registry),
        n_shards=2,
    )
    record = read_bento_record(registry, "demo")
    assert record["bento_tag"] == bento_tag and record["model_tag"] == world["tags"]["lmn"]
    assert len(record["shard_tags"]) == 2 and record["built_at"].endswith("Z")
    assert (registry / "bentos" / bento_tag.replace(":", "/") / "bento.yaml").is_file()
    bento_yaml = (registry / "bentos" / bento_tag.replace(":", "/") / "bento.yaml").read_text()
    assert "MemoryShard0" in bento_yaml and "MemoryShard1" in bento_yaml
    assert (
        "torch=="
        in (registry / "bentos" / bento_tag.replace(":", "/") / "env/python/requirements.txt").read_text()
    )

    with ServeProcess(registry, free_port(), bento_tag=bento_tag) as server:
        candidates = [5, 17, 3, 42]
        response = httpx.post(
            f"{server.url}/rank",
            json={"user_id": 3, "candidate_items": candidates, "timestamp": NOW},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_tag"] == world["tags"]["lmn"] and not body["degraded_memory"]
        served = {item["item_id"]: item["logit"] for item in body["items"]}
        np.testing.assert_allclose(
            [served[c] for c in candidates], offline_logits(world, "lmn", 3, candidates), atol=1e-5, rtol=0
        )


def test_longrec_serve_cli(world, tmp_path: Path) -> None:  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from longrec.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "Redis" in help_text and "REDIS_CONNECTION_STRING" in help_text
    both = runner.invoke(app, ["serve", "--tag", "x:y", "--dataset", "demo"])
    assert both.exit_code == 2 and "exactly one" in both.output
    registry = str(world["root"] / "registry")
    missing = runner.invoke(app, ["serve", "--tag", "longrec-nope:v1", "--registry-dir", registry])
    assert missing.exit_code == 2 and "longrec-nope:v1" in missing.output

    port = free_port()
    command = [sys.executable, "-m", "longrec.cli", "serve", "--tag", world["tags"]["din"], "--port", str(port),
               "--registry-dir", registry, "--feature-repo", str(world["repo"])]  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    cli = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and cli.poll() is None:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/rank", json={"user_id": 2, "candidate_items": [1, 2]}
                )
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, (tmp_path / "serve.log").read_text()[-2000:]
        assert answer.json()["model_tag"] == world["tags"]["din"]
    finally:
        os.kill(cli.pid, signal.SIGTERM)
        cli.wait(timeout=60)
    with pytest.raises(httpx.HTTPError):  # the service went down with the command
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_pipeline_packages_the_promoted_model_and_make_run_ends_by_serving_it(local_pipeline_run) -> None:
    """The pipeline's package-bento step recorded a Bento for the production model; the end of `make run`
    serves it, ranks test-period users and prints their top items and p50/p99."""
    from longrec.registry.store import ModelRegistry
    from longrec.serving.run import showcase_run

    summary, registry = local_pipeline_run
    assert summary.status == "succeeded" and summary.production_tag
    tracks = [p.name.removesuffix(".bento.json") for p in (registry / "production").glob("*.bento.json")]
    assert len(tracks) == 1
    record = read_bento_record(registry, tracks[0])
    assert (
        record["model_tag"] == ModelRegistry(registry).production(tracks[0])["tag"] == summary.production_tag
    )
    lines: list[str] = []
    result = showcase_run(
        summary.run_dir, registry, echo=lines.append, port=free_port(), n_users=3, repeats=3
    )
    assert result["bento_tag"] == record["bento_tag"] and result["requests"] == 9
    assert sum(line.startswith("  user ") for line in lines) == 3
    assert any("p50" in line and "p99" in line for line in lines) and lines[-1] == "service stopped"
    assert all(not user["flags"] for user in result["users"])

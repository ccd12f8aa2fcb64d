"""Static checks of what cannot be built here (no Docker engine): the component image's Dockerfile."""

import re
import shlex
import tomllib
from pathlib import Path

from components.base import BASE_IMAGE

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"


def instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            yield keyword.upper(), rest.strip()


def test_dockerfile_is_well_formed_and_copies_only_what_exists():
    steps = list(instructions())
    assert steps[0][0] == "FROM" and "python:3.11" in steps[0][1]
    known = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "ARG", "USER", "LABEL", "ENTRYPOINT", "CMD"}
    assert {k for k, _ in steps} <= known
    for keyword, rest in steps:
        if keyword == "COPY":
            *sources, _target = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} missing"


def test_dockerfile_installs_the_pinned_set_and_the_gpu_extra():
    text = DOCKERFILE.read_text()
    assert "-c /tmp/constraints.txt" in text and '".[gpu]"' in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("triton==") for dep in extras["gpu"])
    assert "recbole==1.2.1" in text  # the default dataset ships inside this wheel


def test_components_use_the_image_the_dockerfile_documents():
    assert f"-t {BASE_IMAGE.split(':')[0]}:" in DOCKERFILE.read_text()


def test_dockerfile_prebuilds_the_cpu_scan_kernel_as_the_runtime_user():
    steps = list(instructions())
    user_at = next(i for i, (k, rest) in enumerate(steps) if k == "USER" and rest == "longrec")
    builds = [i for i, (k, rest) in enumerate(steps) if k == "RUN" and "cpu_kernel_available()" in rest]
    assert builds and builds[0] > user_at  # built into the cache of the user that runs the tasks
    compilers = " ".join(rest for k, rest in steps if k == "RUN" and "apt-get install" in rest)
    assert "g++" in compilers.split()
    source = ROOT / "longrec" / "kernels" / "scan_cpu.cpp"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert source.is_file() and "*.cpp" in package_data["longrec.kernels"]

"""Static checks of what cannot be built here (no Docker engine): the component image's Dockerfile in its
CPU and CUDA variants, its pins against constraints.txt, and the documented serving image."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from components.base import BASE_IMAGE
from pipelines import training_pipeline as tp

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "infra" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
KNOWN = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "ARG", "USER", "LABEL", "ENTRYPOINT", "CMD"}


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            steps.append((keyword.upper(), rest.strip()))
    return steps


def build_args() -> dict[str, str]:
    args = {}
    for keyword, rest in instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def install_script() -> str:
    return next(rest for keyword, rest in instructions() if keyword == "RUN" and "uv pip install" in rest)


def test_dockerfile_is_well_formed_and_copies_only_what_exists():
    steps = instructions()
    assert steps[0][0] == "FROM"
    assert {k for k, _ in steps} <= KNOWN
    for keyword, rest in steps:
        if keyword == "COPY":
            *sources, _target = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} missing"


def test_base_python_matches_the_package():
    base = instructions()[0][1]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.fullmatch(r"python:(\d+\.\d+)-slim-\w+", base).group(1)
    assert f">={minor}" in requires and base.endswith("bookworm")


def test_pinned_versions_match_constraints():
    pins = constraints()
    args = build_args()
    assert pins["torch"].split("+")[0] == args["TORCH_VERSION"]
    assert pins["uv"] == args["UV_VERSION"]
    script = install_script()
    for name, version in re.findall(r"\b([a-z][a-z0-9_.-]*)==([0-9][^\s\"']*)", script):
        if "$" not in version:
            assert pins[re.sub(r"[-_.]+", "-", name)] == version, name
    # Everything but torch comes from the verified set.
    assert "grep -v '^torch==' constraints.txt > /tmp/constraints.txt" in script
    assert script.count("-c /tmp/constraints.txt") == 3
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "gpu"
    ]
    for requirement in gpu_extra:
        name, _, version = requirement.partition("==")
        assert pins[name] == version  # triton, as the CUDA torch wheel pins it
    assert "recbole==1.2.1" in script  # the default dataset ships inside this wheel


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_each_variant_installs_its_torch_build(variant):
    """The case branch of each variant, as the shell would run it with TORCH_VARIANT set."""
    script = install_script()
    branches = dict(re.findall(r"\b(cpu|cuda)\)\s(.*?);;", script))
    assert set(branches) == {"cpu", "cuda"}
    branch = branches[variant]
    if variant == "cpu":
        assert "--index-url https://download.pytorch.org/whl/cpu" in branch
        assert '"torch==${TORCH_VERSION}+cpu"' in branch and 'EXTRAS=""' in branch
    else:
        assert "download.pytorch.org" not in branch  # PyPI's default torch wheel is the CUDA build
        assert '"torch==${TORCH_VERSION}"' in branch and 'EXTRAS="[gpu]"' in branch
    assert '".${EXTRAS}"' in script
    assert build_args()["TORCH_VARIANT"] == "cpu"  # the plain build is the CPU image
    assert "TORCH_VARIANT must be cpu or cuda" in script


def test_images_the_pipeline_uses_are_the_documented_tags():
    text = DOCKERFILE.read_text()
    assert f"-t {BASE_IMAGE}" in text  # CPU: every task but train
    assert f"-t {BASE_IMAGE}-cuda" in text and "--build-arg TORCH_VARIANT=cuda" in text
    assert tp.TRAIN_IMAGE == f"{BASE_IMAGE}-cuda"


def test_dockerfile_prebuilds_the_cpu_scan_kernel_as_the_runtime_user():
    steps = instructions()
    user_at = next(i for i, (k, rest) in enumerate(steps) if k == "USER" and rest == "longrec")
    builds = [i for i, (k, rest) in enumerate(steps) if k == "RUN" and "cpu_kernel_available()" in rest]
    assert builds and builds[0] > user_at  # built into the cache of the user that runs the tasks
    compilers = " ".join(rest for k, rest in steps if k == "RUN" and "apt-get install" in rest)
    assert "g++" in compilers.split()
    source = ROOT / "longrec" / "kernels" / "scan_cpu.cpp"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert source.is_file() and "*.cpp" in package_data["longrec.kernels"]


def test_build_context_ignores_local_state():
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".longrec", "feature_repo/data"} <= set(ignored)


def test_serving_image_is_documented_as_the_manifests_run_it():
    readme = (DOCKER / "README.md").read_text()
    assert "bentoml containerize" in readme and "BENTOML_HOME" in readme
    assert "start-http-server --service-name MemoryShardN" in readme
    ranker = (ROOT / "infra" / "k8s" / "base" / "ranker.yaml").read_text()
    shards = (ROOT / "infra" / "k8s" / "base" / "memory-shards.yaml").read_text()
    assert "image: longrec-ranker" in ranker and "image: longrec-ranker" in shards
    assert (
        "newName: ghcr.io/longrec/longrec-ranker"
        in (ROOT / "infra" / "k8s" / "base" / "kustomization.yaml").read_text()
    )


# --- docs/operator-guide.md names only commands, options and parameters that exist ----------------------

GUIDE = ROOT / "docs" / "operator-guide.md"


def guide_invocations() -> list[str]:
    """Every `longrec ...` invocation in the guide: code spans, and lines of code blocks (joined at \\)."""
    text = GUIDE.read_text()
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    lines = [line.split(" # ")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    # A command starts a line or span, or follows `kubectl exec ... --`.
    pattern = r"(?:^|(?<=-- ))longrec [a-z][\w-]*[^|#]*"
    return [m.strip() for chunk in lines + spans for m in re.findall(pattern, chunk.strip())]


def test_guide_commands_and_options_exist():
    import typer

    from longrec.cli import app

    root = typer.main.get_command(app)
    seen = 0
    for invocation in guide_invocations():
        words = invocation.split()[1:]
        command, used = root, []
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
            used.append(command.name)
        assert used, f"unknown command in the guide: {invocation!r}"
        if hasattr(command, "commands"):
            continue
        options = {opt for param in command.params for opt in param.opts}
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words)):
            assert flag in options, f"{invocation!r}: {' '.join(used)} has no option {flag}"
        seen += 1
    assert seen >= 20


def test_guide_explains_every_pipeline_parameter():
    from longrec.pipeline.params import PipelineParams

    table = GUIDE.read_text().split("| parameter | default |", 1)[1].split("\n\n", 1)[0]
    for name in PipelineParams.model_fields:
        assert f"`{name}`" in table, name

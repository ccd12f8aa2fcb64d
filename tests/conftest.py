"""Shared fixtures. Environment first: spinning OpenMP threads and BentoML telemetry have no place in tests."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# Served rankers in tests score eagerly: compiling costs 10-20 s per service start on 2 cores. The compiled
# path has its own parity test (tests/test_serving.py::test_compiled_scoring_equals_offline_scores).
os.environ.setdefault("LONGREC_SERVING_COMPILE", "0")
# ...and with one torch thread: several test servers share the 2 cores (the default is one per CPU).
os.environ.setdefault("LONGREC_TORCH_THREADS", "1")
# Triton kernels run on CPU only through the interpreter, which must be on before any @triton.jit runs.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from longrec.pipeline.params import PipelineParams  # noqa: E402

# A slice of MovieLens-100k (whole users) small enough for a full pipeline run in about a minute.
TINY_MAX_EVENTS = 1_500


@pytest.fixture(scope="session")
def tiny_params() -> PipelineParams:
    """Pipeline parameters for smoke runs on a slice of the default dataset."""
    # auc_floor=0: a slice this small learns little; these runs test the mechanics, `make run` the quality.
    # memory_history_length: LMN trains with two horizons (memory written from the last 120 events).
    return PipelineParams(
        max_events=TINY_MAX_EVENTS, epochs=1, batch_size=256, auc_floor=0.0, memory_history_length=120
    )


@pytest.fixture(scope="session")
def local_pipeline_run(tmp_path_factory, tiny_params):
    """The whole training pipeline through kfp.local (SubprocessRunner, use_venv=False), run once."""
    from longrec.pipeline.local import run_local

    root = tmp_path_factory.mktemp("pipeline")
    summary = run_local(tiny_params, root / "runs", registry_dir=root / "registry")
    return summary, root / "registry"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers) keep each module's tests on one worker, so a
    module-scoped fixture (a served world, a trained model) is built once, and every test of the
    session's one pipeline run on the same worker, so that run happens once."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = "local_pipeline_run" if "local_pipeline_run" in fixtures else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))

"""Rollout pipeline, step 1: (optionally replay traffic, then) export the experiment's request log."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rollout_collect(
    dataset: str, state_dir: str, ranker_url: str, replay_requests: int, requests: Output[Dataset]
) -> int:
    """Replay `replay_requests` test-period interactions against the ranker (0: live traffic only), then
    export the active experiment's requests and clicks.

    Args:
        dataset: Registry track the experiment runs on (e.g. ml-100k).
        state_dir: Rollout state folder (experiments, audit log, request log); empty means the default.
        ranker_url: Base URL of the ranking service (POST /rank); needed only when replaying.
        replay_requests: Requests to replay in this run.
        requests: Output parquet of the experiment's logged requests with their feedback.

    Returns:
        The number of logged requests exported.
    """
    from longrec.rollout.decide import Rollout
    from longrec.rollout.operate import collect

    rollout = Rollout(dataset, state_dir=state_dir or None)
    return collect(rollout, requests.path, base_url=ranker_url, replay_count=replay_requests)

"""Next-item ranking pipeline: RecBLR and SASRec trained over seeds, ranked against all items."""

from kfp import dsl

from components.summarize_next_item import summarize_next_item
from components.train_next_item import train_next_item


@dsl.pipeline(
    name="longrec-nextitem",
    description="Time-ordered leave-one-out next-item ranking (HR/NDCG/MRR@10/20) of RecBLR and SASRec.",
)
def nextitem_pipeline(
    dataset: str = "ml-100k",
    models: list[str] = ["recblr", "sasrec"],  # noqa: B006 - KFP reads the default from the signature
    max_history_length: int = 50,
    epochs: int = 30,
    seeds: str = "0,1,2",
    min_core: int = 5,
    max_users: int = 0,
    device: str = "auto",
):
    """The longrec next-item pipeline.

    Args:
        dataset: Built-in dataset (ml-100k, dslabs-movielens) or a user,item,timestamp file path.
        models: Next-item models, each in its own GPU task (recblr, sasrec).
        max_history_length: History length L.
        epochs: Maximum epochs (early stopping on validation NDCG@10).
        seeds: Comma-separated seeds; metrics are mean ± std over them.
        min_core: k-core filter (0 = off).
        max_users: Keep at most this many users (0 = all); for smoke runs.
        device: Training device: "auto" (CUDA when the task has a GPU), "cuda" or "cpu".
    """
    with dsl.ParallelFor(models) as model_name:
        task = train_next_item(
            dataset=dataset,
            model_name=model_name,
            max_history_length=max_history_length,
            epochs=epochs,
            seeds=seeds,
            min_core=min_core,
            max_users=max_users,
            device=device,
        )
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    summarize_next_item(results=dsl.Collected(task.outputs["result"]))

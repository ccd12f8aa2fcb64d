"""Fill the declarative `feature_repo/data/` folder so `feast apply` / `feast materialize` can run there.

python -m longrec.features.export ml-100k --repo-dir feature_repo --max-history-length 50
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from longrec.features.store import write_feature_data

logger = logging.getLogger(__name__)


def export_repo_data(
    repo_dir: Path | str,
    events: pd.DataFrame,
    item_features: pd.DataFrame,
    user_features: pd.DataFrame,
    max_history_length: int = 50,
) -> dict[str, int]:
    """Write the parquet files the repo's sources read into `repo_dir/data`; return bytes per file."""
    repo_dir = Path(repo_dir)
    if not (repo_dir / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{repo_dir} has no feature_store.yaml: not a Feast feature repo")
    sizes = write_feature_data(events, item_features, user_features, repo_dir / "data", max_history_length)
    logger.info("exported feature data to %s: %s", repo_dir / "data", sizes)
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Export a named or file dataset into a feature repo's data folder."""
    # Imported here: the loaders are only needed by this entry point.
    from longrec.data.datasets import load_dataset

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="a built-in dataset name (ml-100k) or an interactions file")
    parser.add_argument("--repo-dir", default="feature_repo", help="the Feast repo (default: feature_repo)")
    parser.add_argument("--max-history-length", type=int, default=50)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = load_dataset(args.dataset)
    export_repo_data(
        args.repo_dir, dataset.events, dataset.item_features, dataset.user_features, args.max_history_length
    )


if __name__ == "__main__":
    main()

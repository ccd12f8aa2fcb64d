"""What every longrec component shares."""

import os

# Built from infra/docker/Dockerfile; the same image runs every component on a cluster, and locally the
# SubprocessRunner runs the same functions in this environment. Override at compile time to pin a registry.
BASE_IMAGE = os.environ.get("LONGREC_BASE_IMAGE", "ghcr.io/longrec/longrec-python:0.1.0")

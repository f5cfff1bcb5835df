"""What the Dagster UI shows stale: GraphQL `assetNodes` against a code location in its own process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

REPO_ROOT = Path(__file__).resolve().parents[1]
NODES = "{ assetNodes { assetKey { path } isPartitioned staleStatus staleCauses { reason } } }"
BY_PARTITION = """
query ($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {
    assetKey { path } partitionKeys staleStatusByPartition staleCausesByPartition { reason } } }"""


def ui_stale(instance: dg.DagsterInstance, env: Mapping[str, str]) -> dict[str, list[str]]:
    """`{asset or asset[partition]: [stale causes]}` for every partition the UI shows STALE.

    The code location is loaded from the repository's `workspace.yaml` in a new process (as `make dev`
    starts one), with `env` added to its environment, and stopped on return: each call is a restart.
    The query is the webserver's own GraphQL schema, over `instance`.

    Args:
        instance: The Dagster instance the demo wrote to.
        env: Settings of the code location (`HNR_PROFILE`, `HNR_DATA_DIR`, `HNR_DATASETS_DIR`).
    """
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with define_out_of_process_context(str(REPO_ROOT / "workspace.yaml"), None, instance) as context:
            nodes = execute_dagster_graphql(context, NODES).data["assetNodes"]
            keys = [{"path": n["assetKey"]["path"]} for n in nodes if n["isPartitioned"]]
            partitioned = execute_dagster_graphql(context, BY_PARTITION, {"keys": keys}).data["assetNodes"]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    stale = {}
    for node in nodes:
        if not node["isPartitioned"] and node["staleStatus"] == "STALE":
            stale["/".join(node["assetKey"]["path"])] = [c["reason"] for c in node["staleCauses"]]
    for node in partitioned:
        name = "/".join(node["assetKey"]["path"])
        rows = zip(node["partitionKeys"], node["staleStatusByPartition"], node["staleCausesByPartition"], strict=True)
        stale |= {f"{name}[{p}]": [c["reason"] for c in causes] for p, status, causes in rows if status == "STALE"}
    return stale

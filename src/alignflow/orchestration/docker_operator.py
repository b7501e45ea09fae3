"""DockerOperator that hands credentials from the Airflow worker's environment to the stage.

The values are read when the task runs, not when the DAG is parsed, so they are never in
params, the serialized DAG or the rendered-template view; DockerOperator's
`private_environment` keeps them out of the task log as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from airflow.providers.docker.operators.docker import DockerOperator


class StageDockerOperator(DockerOperator):
    def __init__(self, *, env_passthrough: Iterable[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.env_passthrough = list(env_passthrough)

    def passthrough_values(self) -> dict[str, str]:
        return {name: os.environ[name] for name in self.env_passthrough if name in os.environ}

    def execute(self, context):
        self.private_environment = {**(self.private_environment or {}), **self.passthrough_values()}
        return super().execute(context)

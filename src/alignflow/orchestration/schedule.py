"""When the retraining DAG runs: on a cron schedule, when new raw data lands, or both.

"New raw data" is an Airflow asset event for `orchestration.raw_data_asset`: whatever
uploads the data marks the asset updated (a task with it as an outlet, or
`POST /api/v2/assets/events`), and Airflow queues a run, as it would on the cron tick.
"""

from __future__ import annotations

from alignflow.config.orchestration import OrchestrationParams

RAW_DATA_ASSET_NAME = "alignflow_raw_data"


def raw_data_asset(orch: OrchestrationParams):
    from airflow.sdk import Asset

    return Asset(uri=orch.raw_data_asset, name=RAW_DATA_ASSET_NAME) if orch.raw_data_asset else None


def build_schedule(orch: OrchestrationParams):
    """A timetable, an asset, both (AssetOrTimeSchedule), or None (manual runs only)."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    timetable = CronTriggerTimetable(orch.schedule, timezone="UTC") if orch.schedule else None
    asset = raw_data_asset(orch)
    if timetable and asset:
        return AssetOrTimeSchedule(timetable=timetable, assets=asset)
    return timetable or asset

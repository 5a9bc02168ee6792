"""dbrunbook's Airflow provider: ``DbRunbookOperator`` and a fleet DAG with dynamic task mapping.

Airflow finds it through the ``apache_airflow_provider`` entry point (pyproject.toml), which names
``get_provider_info``. Nothing here imports Airflow at import time, so dbrunbook keeps working without it;
``operators`` and ``example_dags`` need ``apache-airflow`` and ``apache-airflow-providers-papermill``.
"""

from __future__ import annotations

__all__ = ["get_provider_info"]


def get_provider_info() -> dict:
    """The provider metadata Airflow's ProvidersManager reads (the fields its provider schema requires)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("dbrunbook")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        release = "0.0.0"
    return {
        "package-name": "dbrunbook",
        "name": "dbrunbook",
        "description": "Runbook notebooks for Alembic migrations on PostgreSQL, each run a signed record; "
                       "fleets of tenant databases in waves.",
        "versions": [release],
        "operators": [{"integration-name": "dbrunbook",
                       "python-modules": ["dbrunbook.airflow.operators"]}],
        "integrations": [{"integration-name": "dbrunbook", "external-doc-url": "https://dbrunbook.dev/",
                          "tags": ["software"]}],
    }

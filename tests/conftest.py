"""Shared fixtures: one throwaway Supabase-shaped PostgreSQL per test session.

The cluster is started once; the template database `engagement_template` gets the migrations
and the seed once; a test that writes gets its own copy (`db`), dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from localdb import cluster as localcluster

TEMPLATE = "engagement_template"


@dataclass(frozen=True)
class Database:
    """One database of the test cluster."""

    cluster: localcluster.Cluster
    name: str

    def connect(
        self, user: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        return self.cluster.connect(user, self.name, autocommit=autocommit)

    @property
    def url(self) -> str:
        return self.cluster.url("postgres", self.name)


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    db_cluster = localcluster.start()
    try:
        db_cluster.prepare_database(TEMPLATE)
        yield db_cluster
    finally:
        db_cluster.stop()


@pytest.fixture
def db(cluster: localcluster.Cluster) -> Iterator[Database]:
    """A fresh copy of the migrated, seeded database, for one test."""
    name = cluster.clone(TEMPLATE)
    try:
        yield Database(cluster, name)
    finally:
        cluster.drop(name)

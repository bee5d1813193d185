"""Open-vocabulary labelling and text queries over a semantic map (the salient + geometric
ensemble), answered through one :class:`QuerySession` per map."""

from diff2scene.query.engine import QueryConfig, QueryEngine, QueryResult
from diff2scene.query.ensemble import (
    BRANCHES,
    EnsembleConfig,
    EnsembleScorer,
    GeometricIndex,
    exact_geometric_scores,
)
from diff2scene.query.grammar import RELATIONS, ParsedQuery, parse_query
from diff2scene.query.instances import Instance, InstanceConfig, cluster_voxels, find_instances
from diff2scene.query.labelling import Labelling, LabellingConfig, MaskClassifier, label_map
from diff2scene.query.relations import RelationConfig
from diff2scene.query.session import (
    Freshness,
    LockedSnapshotSource,
    QuerySession,
    SessionAnswer,
    SessionLabelling,
    SessionStats,
)

__all__ = [
    "BRANCHES",
    "RELATIONS",
    "EnsembleConfig",
    "EnsembleScorer",
    "Freshness",
    "GeometricIndex",
    "Instance",
    "InstanceConfig",
    "Labelling",
    "LabellingConfig",
    "LockedSnapshotSource",
    "MaskClassifier",
    "ParsedQuery",
    "QueryConfig",
    "QueryEngine",
    "QueryResult",
    "QuerySession",
    "RelationConfig",
    "SessionAnswer",
    "SessionLabelling",
    "SessionStats",
    "cluster_voxels",
    "exact_geometric_scores",
    "find_instances",
    "label_map",
    "parse_query",
]

"""The run file: one SQLite database per run, the single source of truth of a search.

``format`` identifies, validates and creates files; ``records`` holds the states, records and the bounded
JSON codec; ``store`` the queries (:class:`RunStore`, its guarantees in its docstring); ``lease`` the one-writer
lease with its heartbeat; ``paths`` the run names of the command line.
"""

from lossforge.runfile.format import APPLICATION_ID, SCHEMA_VERSION
from lossforge.runfile.lease import Lease
from lossforge.runfile.paths import list_runs, resolve_run_path
from lossforge.runfile.records import (
    CONFIRM_FIDELITY,
    FULL_FIDELITY,
    CandidateRecord,
    CandidateState,
    EvaluationRecord,
    GenerationRecord,
    LeaseRecord,
    ResultKind,
    RunStatus,
    RunSummary,
)
from lossforge.runfile.store import RunStore

__all__ = [
    "APPLICATION_ID", "SCHEMA_VERSION", "CONFIRM_FIDELITY", "FULL_FIDELITY", "CandidateRecord", "CandidateState",
    "EvaluationRecord", "GenerationRecord", "Lease", "LeaseRecord", "ResultKind", "RunStatus", "RunStore", "RunSummary",
    "list_runs", "resolve_run_path",
]

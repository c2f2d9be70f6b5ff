"""Soak: nothing lost, nothing registered twice, every row accounted for, under injected faults
(500s, 503s, dropped connections, commit-then-timeout) and a second client on the same quota.

The CI run is small and fast; ``pytest -m slow`` runs the full 3,000 rows at the service's real
quota of 100 calls per second (about a minute). benchmarks/soak.py prints the same figures.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from .soak_harness import SoakResult, SoakSettings, run_soak

CI = SoakSettings(
    rows=600,
    qps=400,
    rival_qps=200,
    latency=0.002,
    jitter=0.002,
    # A little above the 1% so that a small run surely meets every kind of fault.
    commit_timeout_rate=0.02,
    hang=0.05,
    client_timeout=0.5,
    late_commit_rate=0.03,
    late_commit_delay=0.8,
    settle=1.2,
    retry_backoff=0.05,
)
# Far beyond the issue: 40% of every call fails, the verifying lists included, so rows are
# left in doubt; the rerun with the ledger must still end with each face stored exactly once.
HARSH = attrs.evolve(
    CI,
    rows=400,
    internal_error_rate=0.15,
    unavailable_rate=0.15,
    drop_rate=0.05,
    commit_timeout_rate=0.05,
    fault_actions=frozenset({"RegisterCustomFace", "ListCustomPersons"}),
    # Shorter times, same order: client timeout < late commit < settle.
    client_timeout=0.25,
    late_commit_delay=0.35,
    settle=0.5,
)
FULL = SoakSettings()  # 3,000 rows, the fault rates, quota 100/s


def check(result: SoakResult, *, throttling: bool = True) -> None:
    assert result.unaccounted == [], "rows with no outcome or several"
    assert result.duplicates == 0
    assert result.lost == 0
    # A face stored for a row reported failed can only be one left in doubt (the ledger
    # keeps it open for the rerun); any other would be a registration the user never sees.
    assert result.orphans <= result.in_doubt
    # After the rerun with the same ledger: exactly the wanted faces, each exactly once.
    assert (result.final_missing, result.final_extra, result.final_duplicates) == (0, 0, 0)
    assert result.rerun_new_faces == result.good_rows_failed - result.orphans
    assert sum(result.statuses.values()) == result.rows
    assert "(no reason)" not in result.failed_reasons | result.skipped_reasons
    # The faults really happened, and the shared quota really throttled.
    assert all(result.faults[kind] > 0 for kind in result.faults), result.faults
    if throttling:  # (the harsh run spends most of its time settling, below the quota)
        assert result.throttled > 0
    assert result.reconciled > 0  # lost answers were resolved by listing the person
    # A second run on the same ledger, started while the first ran, refused at once.
    assert result.second_run_refused.startswith("refused: "), result.second_run_refused
    assert "in use by PID" in result.second_run_refused


async def test_soak_ci(tmp_path: Path) -> None:
    result = await run_soak(CI, tmp_path / "soak.ledger")
    print(result.to_dict())
    check(result)


async def test_soak_harsh_faults_exactly_once_after_rerun(tmp_path: Path) -> None:
    result = await run_soak(HARSH, tmp_path / "soak.ledger")
    print(result.to_dict())
    check(result, throttling=False)


@pytest.mark.slow
async def test_soak_full(tmp_path: Path) -> None:
    result = await run_soak(FULL, tmp_path / "soak.ledger", log=print)
    print(result.to_dict())
    check(result)

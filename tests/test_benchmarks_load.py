"""A short run of benchmarks/load.py: concurrent clients on the shared server, nothing lost."""

from __future__ import annotations

import pytest

from benchmarks import load

pytestmark = pytest.mark.slow


def test_concurrent_mixed_load_matches_solo_answers(iaa_server):
    summary = load.run_load(iaa_server, clients=16, per_client=3)
    assert summary["requests"] == 48 and summary["bad_requests"] == 12
    assert summary["server_errors_5xx"] == 0
    assert summary["good_not_200"] == [] and summary["bad_not_4xx"] == []
    assert summary["mismatches"] == []  # every good answer equals its solo run
    assert set(summary["bad_statuses"]) == {f"bad/{n}" for n in
                                            ("base64", "not-an-image", "bomb", "workflow", "text-with-image", "too-long")}
    rss = summary["server_rss_mib"]
    assert rss["after"] - rss["before"] < 200  # MiB; ~5 GiB resident, flat under load

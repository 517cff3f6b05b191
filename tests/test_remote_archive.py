"""A remote archive: runs archived to object storage (a real S3 API, moto's server on 127.0.0.1,
reached through s3fs), read back by history, show and diff, two runs writing at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ops_lib.demo.postgres import free_port

from .faulty_http import faulty_server  # noqa: F401  (a fixture)


BUCKET = "opsbook-runs"


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def opsbook(*args, env: dict):
    full = {**os.environ, **env}
    full.pop("OPSBOOK_OUTPUTS", None)
    return subprocess.run([sys.executable, "-m", "ops_lib.cli", *args], capture_output=True, text=True, env=full,
                          timeout=300)


def test_two_runs_at_once_archive_to_s3_and_history_show_and_diff_read_it_back(s3, demo):
    import boto3

    out = f"s3://{BUCKET}/team-a"
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: opsbook("run", "slow_queries", "--out", out, env=s3), range(2)))
    assert [d.returncode for d in done] == [1, 1], [d.stderr for d in done]
    assert all(f"report: {out}/slow_queries/" in d.stdout for d in done)

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="team-a/")["Contents"]}
    run_ids = [line.split(":")[0] for d in done for line in d.stdout.splitlines()[:1]]
    for run_id in run_ids:
        for ext in ("ipynb", "html", "json"):
            assert any(k.endswith(f"/{run_id}.{ext}") for k in keys), (run_id, ext)
        assert f"team-a/ledger/{run_id}.0.json" in keys and f"team-a/ledger/{run_id}.1.json" in keys
    assert "team-a/index.html" in keys
    index = client.get_object(Bucket=BUCKET, Key="team-a/index.html")["Body"].read().decode()
    assert all(run_id in index for run_id in run_ids), "the index lists both runs, whichever wrote last"

    history = opsbook("history", "--out", out, env=s3)
    assert history.returncode == 0 and all(run_id in history.stdout for run_id in run_ids)
    shown = opsbook("show", run_ids[0], "--json", "--out", out, env=s3)
    assert json.loads(shown.stdout)["run_id"] == run_ids[0]
    diff = opsbook("diff", "--out", out, env=s3)
    assert diff.returncode == 0 and "→" in diff.stdout


@pytest.mark.parametrize("url, words", [
    ("s3://no-such-bucket-here/x", "cannot be written"),
    ("nosuchscheme://bucket/x", "unknown scheme"),
])
def test_a_remote_archive_that_cannot_be_used_is_exit_3_before_anything_runs(s3, url, words):
    done = opsbook("run", "slow_queries", "--out", url, env=s3)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "testing" not in lines[0]


def test_an_archive_endpoint_that_never_answers_is_exit_3_within_seconds_naming_the_url(s3, faulty_server):
    import time

    silent = faulty_server("hang")
    url = "s3://review-bucket/runs"
    started = time.monotonic()
    done = opsbook("run", "slow_queries", "--out", url, env={**s3, "AWS_ENDPOINT_URL": silent.url})
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "did not answer" in lines[0] and "endpoint" in lines[0]


def test_an_archive_that_goes_silent_after_the_write_check_ends_the_archiving_in_bounded_time(
        s3, faulty_server, monkeypatch, tmp_path):
    import time

    import s3fs

    from ops_lib import archive as archive_mod
    from ops_lib.errors import ArchiveUnavailable

    monkeypatch.setenv("OPSBOOK_HOME", str(tmp_path))
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    archive = archive_mod.RemoteArchive.open_url(f"s3://{BUCKET}/goes-silent", "--out")
    # The same archive, its store now an endpoint that accepts and never answers.
    archive.fs = s3fs.S3FileSystem(endpoint_url=faulty_server("hang").url, key="testing", secret="testing",
                                   skip_instance_cache=True)
    monkeypatch.setattr(archive_mod, "REMOTE_CALL_S", 2.0)
    started = time.monotonic()
    with pytest.raises(ArchiveUnavailable, match="did not answer within 2 s") as raised:
        archive.record_running({"run_id": "slow_queries-20261201T000000Z-abcdef", "runbook": "slow_queries",
                                "status": "running", "started_at": "2026-12-01T00:00:00Z"})
    assert time.monotonic() - started < 10
    assert f"s3://{BUCKET}/goes-silent" in str(raised.value) and "\n" not in str(raised.value)

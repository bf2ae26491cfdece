"""A signed training's status: the signature's subject digest from the trainer's result, next to the digest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loraops.training.status import Observed
from tests.training.test_status import DIGEST, job, plan, pod

pytestmark = [pytest.mark.training, pytest.mark.adapters]


def test_the_signature_digest_of_a_signed_run_reaches_the_output_status() -> None:
    signed = "cd" * 32
    result = {"event": "result", "exit_code": 0, "status": "succeeded", "output_uri": "s3://adapters/x/",
              "digest": DIGEST, "signature_digest": signed, "steps": 10, "metrics": {}}  # fmt: skip
    done = pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": json.dumps(result)})
    status, _ = plan_for(done)
    assert status["output"]["sha256"] == DIGEST and status["output"]["signatureDigest"] == signed
    unsigned = {k: v for k, v in result.items() if k != "signature_digest"}
    status, _ = plan_for(pod("Succeeded", terminated={"exitCode": 0, "message": json.dumps(unsigned)}))
    assert "signatureDigest" not in status["output"]


def plan_for(done: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return plan(Observed(job=job({"type": "Complete", "status": "True"}, active=0), pods=[done]))

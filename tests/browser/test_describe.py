"""The words for a job, for every job JSON the gateway could send (and some it should not):
always one of the six states with non-empty text, numbers with en-US separators, never a
javascript: result link. Generated with hypothesis, checked by the module itself in Chromium."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.browser.conftest import Gateway, open_harness

pytestmark = pytest.mark.browser

count = st.one_of(st.none(), st.integers(0, 10**12), st.floats(0, 1e9, allow_nan=False), st.text(max_size=3))
text = st.one_of(st.none(), st.text(max_size=40))
job = st.fixed_dictionaries({
    "id": st.just("job_x"), "version": st.integers(1, 10**6), "attempt": st.integers(1, 9),
    "state": st.sampled_from(["queued", "processing", "complete", "failed", "cancelled", ""]),
    "queue": st.one_of(st.none(), st.fixed_dictionaries({"position": count, "total": count})),
    "progress": st.one_of(st.none(), st.fixed_dictionaries({"current": count, "total": count, "step": text})),
    "error": st.one_of(st.none(), st.fixed_dictionaries({"message": text, "retryable": st.booleans()})),
    "result": st.one_of(st.none(), st.fixed_dictionaries({"url": st.one_of(text, st.sampled_from(["javascript:alert(1)", "https://x.test/r", "/rel"]))})),
})

CHECK = """async (jobs) => {
  const {describe, safeUrl} = await import('/static/jobstatus.js');
  return jobs.map((job) => {
    const d = describe(job);
    const url = job.result ? safeUrl(job.result.url) : null;
    return {state: d.state, text: d.text, url};
  });
}"""


@pytest.fixture(scope="module")
def module_page(chromium, gateway_server: Gateway):
    ctx = chromium.new_context()
    page = ctx.new_page()
    open_harness(page, gateway_server)
    yield page
    ctx.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=st.lists(job, min_size=1, max_size=40))
def test_every_job_reads_as_one_of_the_six_states(module_page, jobs) -> None:
    out = module_page.evaluate(CHECK, jobs)
    for job_in, d in zip(jobs, out):
        assert d["state"] in {"loading", "queued", "processing", "complete", "failed"}, d
        assert d["text"].strip(), d
        if job_in["state"] in ("queued", "processing", "complete", "failed"):
            assert d["state"] == job_in["state"]
        else:
            assert d["text"] == "Checking status…"  # an unknown state is not guessed at
        q = job_in["queue"] or {}
        if d["state"] == "queued" and isinstance(q.get("position"), int) and isinstance(q.get("total"), int) and q["total"] >= q["position"]:
            assert d["text"] == f"Queued — position {q['position']:,} of {q['total']:,}"
        p = job_in["progress"] or {}
        if d["state"] == "processing" and isinstance(p.get("current"), int) and isinstance(p.get("total"), int) and p["total"] > 0:
            assert d["text"].startswith(f"Processing row {p['current']:,} of {p['total']:,}")
        if d["url"] is not None:
            assert d["url"].startswith(("http://", "https://"))

"""The server's dashboard and API description in a real browser (issue 18): Debian's Chromium
(Playwright) against a real uvicorn server. The browser signs in with its own Basic prompt (the
API key as the password); the dashboard shows the ``/metrics`` figures and the audit trail's
governance figures as charts, behind its own role.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from server_fixtures import ApiServer  # noqa: E402
from workspace_browser import artifacts_dir  # noqa: E402

from aiportal.audit import AuditLog, record_review  # noqa: E402
from aiportal.server.client import ServerClient  # noqa: E402

CT = "totalseg/example_ct_sm.nii.gz"


def _governance_log(path: Path) -> None:
    """lungmask 2.1: 60 reviewed runs, mostly accepted for 40, then mostly edited (drift)."""
    log = AuditLog(path)
    for n in range(60):
        log.append("ai_run", run_id=f"lung-{n}", model_id="lungmask", model_version="2.1", user="reader",
                   finished="2026-12-01T10:00:00+00:00")
        edited = n % 10 == 0 if n < 40 else n % 5 != 0
        record_review(log, f"lung-{n}", "Left lung", "modified" if edited else "accepted", "reader",
                      draft_dice=0.85 if edited else 1.0, volume_change=0.05 if edited else 0.0)


@pytest.fixture(scope="module")
def api(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("dashboard")
    _governance_log(folder / "audit.jsonl")
    server = ApiServer(folder / "server", env={"AIPORTAL_AUDIT_LOG": str(folder / "audit.jsonl")},
                       args=["--executor", "thread", "--workers", "1", "--rate-limit", "100000"])
    server.start()
    server.keys = {role: server.key(role, scopes) for role, scopes in  # type: ignore[attr-defined]
                   (("dashboard", "dashboard"), ("monitor", "metrics"), ("admin", "admin,read,submit,audit"))}
    admin = ServerClient(server.url, api_key=server.keys["admin"])  # type: ignore[attr-defined]
    job = admin.submit_file(shared_data / CT, "classic-ct", consent=True)
    assert admin.wait(job["id"], timeout_s=180)["state"] == "done"
    yield server
    server.stop()


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()}


def test_a_browser_is_asked_for_the_key_and_scripts_get_bearer(api):
    page = requests.get(f"{api.url}/dashboard", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic realm=")
    script = requests.get(f"{api.url}/v1/health", timeout=10)
    assert script.status_code == 401 and script.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(f"{api.url}/dashboard", headers=_basic("aip_wrong_key"), timeout=10).status_code == 401
    assert requests.get(f"{api.url}/dashboard", headers={"Authorization": "Basic !!"}, timeout=10).status_code == 401


def test_the_dashboard_has_its_own_role(api):
    assert requests.get(f"{api.url}/dashboard", headers=_basic(api.keys["monitor"]), timeout=10).status_code == 403
    for path in ("/metrics", "/v1/jobs", "/v1/audit"):
        answer = requests.get(f"{api.url}{path}", headers=_basic(api.keys["dashboard"]), timeout=10)
        assert answer.status_code == 403, path
    assert requests.get(f"{api.url}/dashboard", headers=_basic(api.keys["admin"]), timeout=10).status_code == 200


def test_the_dashboard_in_chromium_shows_service_and_governance_charts(api, chromium):
    context = chromium.new_context(viewport={"width": 1300, "height": 1000},
                                   http_credentials={"username": "ops", "password": api.keys["dashboard"]})
    page = context.new_page()
    response = page.goto(f"{api.url}/dashboard")
    assert response.status == 200
    page.screenshot(path=str(artifacts_dir("server-dashboard") / "dashboard.png"), full_page=True)
    jobs = {row[0]: row for row in page.eval_on_selector_all(
        "#jobs tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")}
    assert int(jobs["classic-ct"][3]) >= 1 and float(jobs["classic-ct"][6]) > 0  # done, mean inference s
    requests_table = page.eval_on_selector_all("#requests tr", "rows => rows.map(r => r.cells[0].textContent)")
    assert "/v1/jobs" in requests_table and any(route.startswith("/v1/jobs/{job_id}") for route in requests_table), \
        " | ".join(requests_table)
    assert page.text_content("#queue-depth") == "queue depth 0"
    assert page.text_content("#drift") == "Drift alarm: lungmask 2.1"
    captions = page.eval_on_selector_all("figcaption", "items => items.map(i => i.textContent)")
    assert captions[0] == "Jobs per model by state (shares)" and "Reader decisions per model" in captions
    assert any(caption.startswith("lungmask 2.1: edit rate") for caption in captions)
    assert page.locator("svg polyline.series").count() == 1 and page.locator("svg rect.part-done").count() == 1
    dice_bins = page.eval_on_selector_all("figure:has(figcaption:text('Dice')) rect.bin",
                                          "bins => bins.map(b => Number(b.textContent))")
    assert dice_bins[-2:] == [20, 40] and sum(dice_bins) == 60  # 20 edits at Dice 0.85, 40 unchanged
    assert "aip_" not in page.content() and api.data_dir.name not in page.content()  # no key, no path
    context.close()


def test_the_api_description_renders_in_chromium_from_this_server_alone(api, chromium):
    """Swagger UI and ReDoc load their scripts from the server itself (a closed hospital network has no
    CDN): after signing in, /docs lists the operations and /redoc renders, and nothing leaves the server."""
    context = chromium.new_context(viewport={"width": 1300, "height": 1000},
                                   http_credentials={"username": "me", "password": api.keys["admin"]})
    page = context.new_page()
    requested: list[str] = []
    blocked: dict[str, str] = {}  # outside requests the pages' Content-Security-Policy stopped in the browser
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: blocked.update({request.url: request.failure or ""}))
    response = page.goto(f"{api.url}/docs")
    assert response.status == 200
    jobs = page.locator("#operations-jobs-list_jobs_v1_jobs_get")  # GET /v1/jobs, drawn by Swagger UI's script
    jobs.wait_for(timeout=30_000)
    assert jobs.locator(".opblock-summary-method").text_content() == "GET"
    assert jobs.locator(".opblock-summary-path").get_attribute("data-path") == "/v1/jobs"
    assert page.locator(".opblock").count() >= 14 and page.locator("text=AI Portal inference server").count() >= 1
    health = page.locator("#operations-server-health_v1_health_get")  # Try it out, under the pages' policy
    health.locator(".opblock-summary").click()
    health.locator("button.try-out__btn").click()
    health.locator("button.execute").click()
    status = health.locator(".live-responses-table tr.response .response-col_status").first
    assert status.text_content(timeout=30_000) == "200"
    page.screenshot(path=str(artifacts_dir("server-dashboard") / "docs.png"))
    assert [url for url in requested if not url.startswith(api.url + "/")] == []  # Swagger UI asks nothing else
    response = page.goto(f"{api.url}/redoc")
    assert response.status == 200 and "default-src 'self'" in response.headers["content-security-policy"]
    page.locator('[data-section-id="operation/list_jobs_v1_jobs_get"]').wait_for(timeout=30_000)  # by ReDoc's script
    assert page.locator('[data-section-id^="operation/"]').count() >= 14
    page.screenshot(path=str(artifacts_dir("server-dashboard") / "redoc.png"))
    outside = {url for url in requested if not url.startswith(api.url + "/")}
    assert outside == {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, outside  # ReDoc's footer logo, which the
    assert blocked[next(iter(outside))] == "csp", blocked  # policy stops before it is sent
    assert {f"{api.url}/docs/assets/swagger-ui-bundle.js", f"{api.url}/docs/assets/swagger-ui.css",
            f"{api.url}/docs/assets/redoc.standalone.js", f"{api.url}/openapi.json"} <= set(requested), requested
    context.close()
    anonymous = chromium.new_context()  # no sign-in: Chromium gets the Basic challenge and no page, no script
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js"):
        with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.new_page().goto(f"{api.url}{path}")
    anonymous.close()
    for name in ("../__init__.py", "core.py", "nothing.js"):  # only the listed files, never the package's others
        answer = requests.get(f"{api.url}/docs/assets/{name}", headers=_basic(api.keys["admin"]), timeout=10)
        assert answer.status_code == 404, (name, answer.status_code)

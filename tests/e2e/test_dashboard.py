"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through the system's
chromedriver, against the real API and a real Celery worker (the embedded layout). Screenshots of the job page go
to the test's folder, or to $GRPO_TEST_ARTIFACTS/dashboard when that is set, to keep them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from grpo_core import arithmetic_task
from tests.e2e.helpers import read_events, submit, upload_arithmetic

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): make install "
        "adds them as root, or apt-get install chromium chromium-driver",
    ),
    # One layout is enough here: the page talks to the same API either way (test_end_to_end covers both).
    pytest.mark.parametrize("running_service", ["embedded"], indirect=True),
]

WAIT_SECONDS = 240  # bounds each wait for the browser or the worker; no assertion is about time


@pytest.fixture
def artifacts(tmp_path) -> Path:
    keep = os.environ.get("GRPO_TEST_ARTIFACTS")
    folder = (Path(keep) if keep else tmp_path) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or a driver
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver, downloads
    finally:
        driver.quit()


class Page:
    """The few things the test does to the page, by the ids and labels the dashboard gives its parts."""

    def __init__(self, driver):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT_SECONDS)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text_of(self, css: str) -> str:
        found = self.find_all(css)
        return found[0].text if found else ""

    def until_text(self, css: str, text: str) -> str:
        self.wait.until(lambda _driver: text in self.text_of(css), f"{css} never showed {text!r}")
        return self.text_of(css)

    def type(self, css: str, value: str) -> None:
        element = self.find(css)
        element.clear()
        element.send_keys(value)

    def select(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_value(value)

    def sign_in(self, key: str) -> None:
        self.type("#api-key", key)
        self.find("#signin-form button[type=submit]").click()

    def open_new_job_form(self) -> None:
        self.find('nav a[href="#/new"]').click()
        self.wait.until(lambda _driver: self.find_all("#hp-group_size") and not self.text_of("#hp-group_size-error"))

    def new_job(self, dataset_id: str, eval_dataset_id: str | None = None, **hyperparameters) -> str:
        """Fill a fresh new-job form and submit it; returns the id of the job page it opens."""
        self.open_new_job_form()
        self.fill_job_form(dataset_id, **hyperparameters)
        if eval_dataset_id:
            self.select("#eval-dataset", eval_dataset_id)
        self.find("#submit-job").click()
        self.wait.until(lambda driver: "#/jobs/" in driver.current_url, "the form did not open the job's page")
        self.wait.until(lambda _driver: self.find_all("[data-chart=reward]"))
        return self.driver.current_url.split("#/jobs/")[1]

    def fill_job_form(self, dataset_id: str, **hyperparameters) -> None:
        self.select("#dataset", dataset_id)
        self.select("#base-model", "tiny-random-llama")
        for name, params in (("length_target", {"target": 40}), ("numeric_answer", None)):
            checkbox = self.find(f'input[data-reward="{name}"]')
            if not checkbox.is_selected():
                checkbox.click()
            if params:
                self.type(f"#{checkbox.get_attribute('id')}-params", json.dumps(params))
        for path, value in hyperparameters.items():
            self.type(f"#hp-{path.replace('.', '-')}", str(value))

    def job_ids_listed(self) -> list[str]:
        return [row.get_attribute("data-job-id") for row in self.find_all("table.jobs tr[data-job-id]")]


def test_the_dashboard_trains_watches_downloads_and_cancels(running_service, browser, tmp_path, artifacts):
    driver, downloads = browser
    page = Page(driver)
    key = running_service.grpo("keys", "create", "--tenant", "dashboard")
    driver.get(running_service.base_url + "/")

    # A wrong key: the page says the API refused it, and shows nothing else.
    page.sign_in("grpo_not-a-key")
    assert "refused this key (401)" in page.until_text("#signin-error", "401")
    assert not page.find("#nav").is_displayed()

    page.sign_in(key)
    page.until_text("#view h1", "Jobs")
    assert page.find("#nav").is_displayed()

    # Upload a dataset from the form.
    rows = arithmetic_task()[0][:8]
    dataset_file = tmp_path / "arithmetic.jsonl"
    dataset_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.open_new_job_form()
    page.find("#dataset-file").send_keys(str(dataset_file))
    page.find("#upload-dataset").click()
    uploaded = page.until_text("#upload-result", "Uploaded arithmetic.jsonl: 8 rows")
    dataset_id = uploaded.rsplit("(", 1)[1].rstrip(").")

    # The API's validation error is shown next to the field it names, and nothing is queued.
    page.fill_job_form(dataset_id, group_size=1)
    page.find("#submit-job").click()
    assert "hyperparameters.group_size" in page.until_text("#hp-group_size-error", "group_size")
    assert page.find("#hp-group_size").get_attribute("aria-invalid") == "true"
    assert "#/new" in driver.current_url
    driver.save_screenshot(str(artifacts / "new-job-refused.png"))

    # A tiny job from the form; its page opens at once, before the worker has trained a step.
    job_id = page.new_job(
        dataset_id,
        dataset_id,
        group_size=4,
        prompts_per_step=2,
        max_steps=8,
        checkpoint_every=2,
        max_new_tokens=8,
        eval_every=4,
        eval_samples_per_prompt=2,
        beta=0.04,  # a reference pass, so the KL curve has something to show
        **{"lora.r": 4},
    )
    # Every value the reward chart's point count takes from here on, and a mark that a reload would wipe.
    driver.execute_script(
        """window.sameDocument = true; window.pointCounts = [];
        const chart = document.querySelector('[data-chart=reward]');
        window.pointCounts.push(Number(chart.dataset.points));
        new MutationObserver((records) => records.forEach((r) => window.pointCounts.push(Number(r.oldValue))))
          .observe(chart, {attributes: true, attributeFilter: ['data-points'], attributeOldValue: true});"""
    )
    page.until_text("#job-status", "succeeded")
    counts = driver.execute_script(
        "return window.pointCounts.concat([Number(arguments[0].dataset.points)])", page.find("[data-chart=reward]")
    )
    assert driver.execute_script("return window.sameDocument") is True, "the page was reloaded"
    assert counts[-1] == 8 and counts == sorted(counts), counts
    assert len(set(counts)) >= 3, f"the chart should gain points step by step while the job trains: {counts}"
    for chart in ("kl", "length", "clip", "lr"):
        assert page.find(f"[data-chart={chart}]").get_attribute("data-points") == "8"
    assert page.find("[data-chart=heldout]").get_attribute("data-points") == "3"  # before, at step 4, after
    assert "reward_mean" in page.text_of("[data-chart=reward] .latest")
    assert page.find("[data-chart=reward] canvas").is_displayed()
    assert "group_size" in page.text_of("#hyperparameters")

    # The checkpoints appeared as the job saved them; one downloads with the sha256 the page shows.
    page.wait.until(lambda _driver: len(page.find_all("#checkpoints tr[data-step]")) == 4)
    steps = [row.get_attribute("data-step") for row in page.find_all("#checkpoints tr[data-step]")]
    assert steps == ["2", "4", "6", "8"]
    shown_sha256 = page.text_of('#checkpoints tr[data-step="8"] .sha256')
    page.find('#checkpoints button[data-step="8"]').click()
    page.until_text('#checkpoints tr[data-step="8"] .download-result', "sha256 verified")
    archive = downloads / f"{job_id}-step-8.tar.gz"
    page.wait.until(lambda _driver: archive.exists() and not list(downloads.glob("*.crdownload")))
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == shown_sha256
    assert len(shown_sha256) == 64

    # The sampled completions of step 2: both stored groups, each completion with its scores and advantage.
    page.type("#sample-step", "2")
    page.find("#samples-title ~ form button[type=submit]").click()
    page.wait.until(lambda _driver: len(page.find_all("#samples tr.sample")) == 8)
    assert all(group.get_attribute("data-step") == "2" for group in page.find_all("#samples .sample-group"))
    assert page.text_of("#samples .prompt").startswith("What is")
    headers = [th.text for th in page.find_all("#samples .sample-group:first-child thead th")]
    assert headers[:4] == ["#", "Completion", "Reward", "Advantage"]
    assert sorted(headers[4:]) == ["length_target", "numeric_answer"]  # a score column per reward
    driver.save_screenshot(str(artifacts / "job-page.png"))
    driver.execute_script("arguments[0].scrollIntoView()", page.find("#samples-title"))
    driver.save_screenshot(str(artifacts / "job-page-samples.png"))

    # A second job, cancelled from its page.
    second_id = page.new_job(dataset_id, group_size=2, max_steps=500, checkpoint_every=0, max_new_tokens=8)
    page.until_text("#job-status", "running")
    page.find("#cancel-job").click()
    driver.switch_to.alert.accept()
    page.until_text("#job-status", "cancelled")
    assert not page.find("#cancel-job").is_enabled()
    driver.save_screenshot(str(artifacts / "cancelled-job-page.png"))

    # The jobs list, filtered by status; the finished job's row carries its reward sparkline.
    page.find('nav a[href="#/jobs"]').click()
    page.wait.until(lambda _driver: len(page.job_ids_listed()) == 2)
    first_row = page.find(f'tr[data-job-id="{job_id}"]')
    assert "succeeded" in first_row.text and "8 / 8" in first_row.text
    assert first_row.find_element("css selector", "svg.sparkline").get_attribute("data-points") == "8"
    page.select("#status-filter", "cancelled")
    page.wait.until(lambda _driver: page.job_ids_listed() == [second_id])
    driver.save_screenshot(str(artifacts / "jobs-list.png"))

    # Signing out forgets the key.
    page.find("#sign-out").click()
    page.until_text("#signin-error", "Signed out")
    assert driver.execute_script("return sessionStorage.length") == 0


def start_api(service) -> subprocess.Popen:
    """Another API process on the service's port, as an operator's restart would start it; returns once ready."""
    port = service.base_url.rsplit(":", 1)[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "api", "--port", port],
        env=service.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(service.base_url + "/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "the API did not start again"
        time.sleep(0.3)


def test_the_job_page_resumes_its_event_stream_after_the_api_restarts(running_service, browser, artifacts):
    """The page reconnects with Last-Event-ID on its own: across an API restart it receives every event of the job
    exactly once (a replay from the start would count some twice), and the chart ends complete, without a reload."""
    driver, _downloads = browser
    page = Page(driver)
    client = running_service.client("dashboard-restart")
    key = client.headers["Authorization"].removeprefix("Bearer ")
    # Long enough to be still training when the API goes (a tiny step takes well under 0.1 s when the machine is idle).
    steps = 300
    job_id = submit(client, upload_arithmetic(client), max_steps=steps, checkpoint_every=0)
    driver.get(running_service.base_url + "/")
    page.sign_in(key)
    page.until_text("#view h1", "Jobs")
    driver.get(f"{running_service.base_url}/#/jobs/{job_id}")
    driver.execute_script("window.sameDocument = true")
    page.wait.until(lambda _driver: int(page.find("[data-chart=reward]").get_attribute("data-points")) >= 1)

    first_api = running_service.processes[0]
    first_api.terminate()
    first_api.wait(timeout=30)
    page.until_text("#stream-state", "reconnecting")
    events_before = int(page.find("#stream-state").get_attribute("data-events"))
    second_api = start_api(running_service)
    try:
        page.until_text("#job-status", "succeeded")
        page.until_text("#stream-state", "finished")
        assert driver.execute_script("return window.sameDocument") is True, "the page was reloaded"
        assert page.find("[data-chart=reward]").get_attribute("data-points") == str(steps)
        every_event = read_events(client, job_id)
        assert events_before < len(every_event), "some events should come through the second stream"
        assert page.find("#stream-state").get_attribute("data-events") == str(len(every_event))
        driver.save_screenshot(str(artifacts / "job-page-after-restart.png"))
    finally:
        second_api.terminate()
        second_api.wait(timeout=30)

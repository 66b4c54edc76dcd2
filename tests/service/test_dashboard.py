"""The dashboard in a real headless Chromium: tasks appear, reach their end, and stop."""

from __future__ import annotations

import pathlib
from typing import Any

import httpx
import pytest

from tests.service.browser import chromium, viewport
from tests.service.conftest import Served, finish, start_node

pytestmark = [pytest.mark.browser, pytest.mark.subprocess]
WAIT = 15


def _invoke(url: str, name: str, payload: Any = None) -> str:
    response = httpx.post(f"{url}/v1/functions/{name}/invocations", json={"payload": payload})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def test_dashboard_shows_tasks_live_and_stops_one(served: Served, tmp_path: pathlib.Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path)
    wait = WebDriverWait(driver, WAIT)
    try:
        viewport(driver, 1280, 800)
        driver.get(served.url + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#functions .card")) == 4)

        greeted = _invoke(served.url, "greet", {"name": "Ada"})
        row = f'tr[data-task-id="{greeted}"][data-status="Succeeded"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        for task in ("greet", "greet", "fail"):
            _invoke(served.url, task, {"name": "Bo"})
        held = _invoke(served.url, "hold")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-task-id="{held}"]'))
        driver.save_screenshot(str(tmp_path / "overview-1280.png"))

        driver.find_element(By.CSS_SELECTOR, row).click()
        wait.until(lambda d: d.find_element(By.ID, "t-id").text == greeted)
        events = '#timeline li[data-status="Succeeded"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, events))
        timeline = [
            li.get_attribute("data-status")
            for li in driver.find_elements(By.CSS_SELECTOR, "#timeline li")
        ]
        assert timeline == ["Enqueued", "Dequeued", "Running", "Succeeded"]
        assert '"Ada"' in driver.find_element(By.ID, "t-result").text
        driver.save_screenshot(str(tmp_path / "task-1280.png"))

        driver.get(f"{served.url}/#/tasks/{held}")
        status = '#t-status[data-status="{}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, status.format("Running")))
        stop = driver.find_element(By.ID, "stop")
        assert stop.is_enabled()
        stop.click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, status.format("Stopped")))
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline li[data-status="Stopped"]')
        )
        assert not driver.find_element(By.ID, "stop").is_enabled()
        record = httpx.get(f"{served.url}/v1/tasks/{held}").json()
        assert record["status"] == "Stopped"
        driver.save_screenshot(str(tmp_path / "stopped-1280.png"))

        viewport(driver, 390, 844, mobile=True)
        driver.get(served.url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, "the overview scrolls sideways at a phone's width"
        driver.save_screenshot(str(tmp_path / "overview-390.png"))
        driver.get(f"{served.url}/#/tasks/{held}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, status.format("Stopped")))
        driver.save_screenshot(str(tmp_path / "stopped-390.png"))
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert logs == [], logs
    finally:
        driver.quit()


def test_dashboard_with_a_token(tmp_path: pathlib.Path) -> None:
    """Opened as /?token=..., the page drops the token from the address and uses it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    node = start_node("--token", "s3cret")
    driver = chromium(tmp_path)
    try:
        driver.get(node.url + "/")
        assert "needs a token" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(node.url + "/?token=s3cret")
        wait = WebDriverWait(driver, WAIT)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#functions .card")) == 4)
        assert "token" not in driver.current_url
        assert driver.find_element(By.ID, "conn").get_attribute("data-state") == "ok"
    finally:
        driver.quit()
        node.process.terminate()
        finish(node)

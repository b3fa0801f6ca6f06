"""`qwen-deploy ui`: the Chainlit page over a real llama-cpp-python server started by `up`, driven in
headless Chromium (Debian's chromium and chromedriver, through Selenium). Screenshots go to
$QWEN_DEPLOY_TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from qwen_deploy.ui import (
    JSON_SYSTEM_PROMPT,
    UISettings,
    estimate_tokens,
    header_text,
    parse_json_answer,
    system_prompt_arg,
    trim_history,
)
from tests.engine_harness import free_port
from tests.up_harness import QD, TAG_VAR, kill_all, new_tag, read_until, tagged_pids

ARTIFACTS = Path(os.environ.get("QWEN_DEPLOY_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


# ----------------------------------------------------------------------------- pure parts


def _turn(role: str, words: int) -> dict[str, str]:
    return {"role": role, "content": " ".join(["w"] * words)}


def test_trim_history_keeps_the_newest_turns_that_fit():
    """Count = words. System 10 + turns of 30, 30, 30, 30, 5 against a budget of 80: the newest three
    (30 + 30 + 5 = 65; with the system prompt 75 <= 80) stay, the oldest two go."""
    turns = [_turn("user", 30), _turn("assistant", 30), _turn("user", 30), _turn("assistant", 30), _turn("user", 5)]

    def count(text: str) -> int:
        return len(text.split())

    kept, dropped = trim_history("s " * 10, turns, count, 80)
    assert [(t["role"], len(t["content"].split())) for t in kept] == [("user", 30), ("assistant", 30), ("user", 5)]
    assert dropped == 2
    kept, dropped = trim_history("s " * 10, turns, count, 200)
    assert kept == turns and dropped == 0
    # the new message is kept even when it alone is over the budget
    kept, dropped = trim_history("s " * 10, turns, count, 1)
    assert kept == [turns[-1]] and dropped == 4


def test_trim_history_starts_with_a_user_turn():
    turns = [_turn("user", 10), _turn("assistant", 10), _turn("user", 10), _turn("assistant", 10), _turn("user", 1)]
    kept, _ = trim_history("", turns, lambda t: len(t.split()), 31)  # fits the last four (31), drops to user-first
    assert kept[0]["role"] == "user" and len(kept) == 3


@pytest.mark.parametrize(
    "text,value",
    [('{"a": 1}', {"a": 1}), ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}), ("  [1]  ", [1])],
)
def test_json_answers_are_parsed(text, value):
    assert parse_json_answer(text) == (value, None)


def test_invalid_json_answer_says_where():
    value, why = parse_json_answer('{"a": }')
    assert value is None and "line 1, column 7" in why


def test_system_prompt_from_a_file_and_json_mode(tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Be terse.\n")
    assert system_prompt_arg(f"@{prompt}", False) == "Be terse."
    assert system_prompt_arg("Hi", True) == f"Hi\n{JSON_SYSTEM_PROMPT}"
    assert estimate_tokens("x" * 30) == 14


def test_header_names_model_engine_and_context():
    settings = UISettings("http://h:1", "qwen", "llamacpp", 32768, None, "s", 16, True, "t")
    assert header_text(settings) == "qwen · llama.cpp · 32,768-token context · JSON answers"


# ----------------------------------------------------------------------------- the page in Chromium


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "Debian's chromium and chromium-driver are needed (scripts/test installs them)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
    ):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


class Page:
    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By

        self.d, self.By = driver, By
        driver.get(url)
        self.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#chat-input"), 60, "the chat input")
        # the session is live once the app's greeting has arrived over its socket
        self.wait_for(lambda: any("Connected to" in s for s in self.steps()), 60, "the app's greeting")

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.03)
        self.d.save_screenshot(str(ARTIFACTS / "ui-failure.png"))
        raise AssertionError(f"{what} did not appear within {timeout}s (screenshot: ui-failure.png)")

    def steps(self) -> list[str]:
        """Every message's text, read in one go in the page (React re-renders them while streaming)."""
        return self.d.execute_script("return [...document.querySelectorAll('[data-step-type]')].map(e => e.innerText)")

    def send(self, text: str) -> int:
        """Type and send a message; returns how many steps were on the page before."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.keys import Keys

        before = len(self.steps())
        value = "return document.querySelector('#chat-input').value"
        for _ in range(20):  # the input re-renders while the page settles: find it afresh until the text holds
            try:
                box = self.d.find_element(self.By.CSS_SELECTOR, "#chat-input")
                box.click()
                box.send_keys(text)
                if self.d.execute_script(value) == text:
                    box.send_keys(Keys.ENTER)
                    return before
            except StaleElementReferenceException:
                pass
            time.sleep(0.1)
        raise AssertionError("the chat input kept re-rendering")

    def answer(self, before: int, timeout: float = 120) -> tuple[str, list[str]]:
        """The newest step's text once it stops changing, and every distinct text seen while it streamed."""
        seen: list[str] = []
        self.wait_for(lambda: len(self.steps()) > before + 1, timeout, "an answer")  # user message + answer
        stable_since, last = time.monotonic(), None
        while time.monotonic() - stable_since < 2.5:
            steps = self.steps()
            text = steps[-1] if steps else ""
            if text != last:
                if text.strip():
                    seen.append(text)
                last, stable_since = text, time.monotonic()
            time.sleep(0.02)
        return last or "", seen


@pytest.fixture
def served(smollm2, tmp_path):
    """SmolLM2 served by `up` (context 2,048) and its chat page; nothing is left running afterwards."""
    tag = new_tag()
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(tmp_path / "state"), HF_HUB_OFFLINE="1", **{TAG_VAR: tag})
    qd = QD(env)
    port, ui_port = free_port(), free_port()
    up = ["up", "--model-file", str(smollm2), "--context", "2048", "--port", str(port), "--name", "smol", "--detach"]
    assert qd.run(*up).returncode == 0
    ui = qd.start("ui", "--name", "smol", "--port", str(ui_port), "--max-tokens", "64", "--temperature", "0")
    try:
        read_until(ui.stdout, f"http://127.0.0.1:{ui_port}", timeout=120)
        yield qd, up, f"http://127.0.0.1:{ui_port}"
    finally:
        ui.terminate()
        ui.communicate(timeout=30)
        qd.run("down", "--all")
        left = tagged_pids(tag)
        kill_all(left)
        assert not left, f"processes left behind: {left}"


@pytest.mark.engine
def test_chat_page_streams_an_answer_and_survives_a_server_restart(served):
    qd, up, url = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = _driver()
    try:
        page = Page(driver, url)
        header = driver.find_element(page.By.CSS_SELECTOR, "#qwen-deploy-header").text
        assert header == "SmolLM2-135M-Instruct.Q4_1 · llama.cpp · 2,048-token context"

        before = page.send("What is 2+2? Answer with a number.")
        text, _ = page.answer(before)
        assert "4" in text  # a real model, a sensible answer

        before = page.send("Write three sentences about the sea.")
        text, seen = page.answer(before)
        driver.save_screenshot(str(ARTIFACTS / "ui-chat.png"))
        assert len(text.split()) >= 5
        # streamed: the answer was seen growing, several partial texts each a prefix of the final one
        partial = [s for s in seen if s != text]
        assert len(partial) >= 2, seen
        assert all(text.startswith(s.rstrip()) for s in partial[-3:]), seen

        # the model server goes away: the page says so instead of failing
        assert qd.run("down", "smol").returncode == 0
        before = page.send("Are you there?")
        text, _ = page.answer(before, timeout=60)
        driver.save_screenshot(str(ARTIFACTS / "ui-server-down.png"))
        assert "is not reachable" in text and "qwen-deploy up" in text

        # back up on the same port: the next message works
        assert qd.run(*up).returncode == 0
        before = page.send("Name a colour.")
        text, _ = page.answer(before)
        driver.save_screenshot(str(ARTIFACTS / "ui-after-restart.png"))
        assert text.strip() and "not reachable" not in text and "refused" not in text
    finally:
        driver.quit()


@pytest.mark.engine
def test_json_answers_are_shown_as_json(smollm2, tmp_path):
    """--json-answers: the server's JSON mode constrains the reply; the page shows it as formatted JSON."""
    tag = new_tag()
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(tmp_path / "state"), HF_HUB_OFFLINE="1", **{TAG_VAR: tag})
    qd = QD(env)
    port, ui_port = free_port(), free_port()
    assert (
        qd.run(
            "up", "--model-file", str(smollm2), "--context", "2048", "--port", str(port), "--name", "j", "--detach"
        ).returncode
        == 0
    )
    ui = qd.start(
        "ui", "--name", "j", "--port", str(ui_port), "--max-tokens", "48", "--json-answers", "--temperature", "0"
    )
    driver = None
    try:
        read_until(ui.stdout, f"http://127.0.0.1:{ui_port}", timeout=120)
        driver = _driver()
        page = Page(driver, f"http://127.0.0.1:{ui_port}")
        before = page.send("Give the name and the age of a fictional cat.")
        text, _ = page.answer(before)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "ui-json.png"))
        if "not valid JSON" in text:  # 48 tokens may cut the object short: then the page must say so
            assert "The answer is not valid JSON" in text
        else:
            code = driver.execute_script(
                "const s = [...document.querySelectorAll('[data-step-type]')].pop();"
                "const c = s && s.querySelector('code'); return c ? c.innerText : null"
            )
            assert code is not None, text  # shown as a code block
            value = json.loads(code)
            assert isinstance(value, dict) and value
    finally:
        if driver:
            driver.quit()
        ui.terminate()
        ui.communicate(timeout=30)
        qd.run("down", "--all")
        left = tagged_pids(tag)
        kill_all(left)
        assert not left

"""The rubric editor in a real browser: the manifest's editor, its errors beside their lines
(a bad regex on line 5), then a save that becomes the module's rubric revision 1."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from modules.services import create_module
from tests.browser.screens import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BROKEN = """\
checks:
  - name: page changed
    vm: web
    run: grep -q student /srv/www/index.html
    expect: {stdoutMatches: '(unclosed'}
"""
FIXED = BROKEN.replace("{stdoutMatches: '(unclosed'}", "{exitCode: 0}")


def test_the_rubric_editor_marks_errors_on_their_lines_and_saves(
    live_portal, browser, instructor, good_manifest, tmp_path
):
    module = create_module(name="graded", description="", text=good_manifest, user=instructor)
    live_portal.login(browser, instructor)
    browser.get(live_portal.url("/modules/graded/rubric/"))
    wait = WebDriverWait(browser, 20)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".CodeMirror-linenumber")))
    browser.execute_script("window.rudderEditor.setValue(arguments[0]);", BROKEN)
    browser.find_element(By.ID, "validate").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "validation-summary"), "error"))
    on_line_5 = browser.execute_script(
        "const info = window.rudderEditor.lineInfo(4);"
        "return (info.widgets || []).map(w => w.node.textContent);"
    )
    assert any("checks[0].expect.stdoutMatches" in t for t in on_line_5), on_line_5
    save_screenshot(browser, "rubric-editor.png", tmp_path)
    browser.execute_script("window.rudderEditor.setValue(arguments[0]);", FIXED)
    browser.find_element(By.ID, "save").click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "revision 1"))
    assert module.module.rubric.text == FIXED

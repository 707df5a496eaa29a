"""The manifest editor in a real browser: errors beside their lines, then a save."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from modules.models import Module
from tests.browser.screens import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BROKEN = """\
vms:
  - name: web
    source:
      url: http://127.0.0.1:9/x-20250101.qcow2
    provisioners:
      - name: upload
        type: file
        file: {fileRef: missing, destination: tmp/x}
"""
FIXED = BROKEN.replace("fileRef: missing, destination: tmp/x", "fileRef: motd, destination: /tmp/x")
FIXED = "files: [{name: motd, inline: hi}]\n" + FIXED


def type_manifest(browser, text: str) -> None:
    browser.execute_script("window.rudderEditor.setValue(arguments[0]);", text)


def test_validate_marks_each_error_on_its_line_and_save_keeps_the_text(
    live_portal, browser, instructor, tmp_path
):
    live_portal.login(browser, instructor)
    browser.get(live_portal.url("/modules/new/"))
    wait = WebDriverWait(browser, 20)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".CodeMirror-linenumber")))
    type_manifest(browser, BROKEN)
    browser.find_element(By.ID, "validate").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "validation-summary"), "error"))
    widgets = browser.find_elements(By.CSS_SELECTOR, ".line-problem.error")
    texts = [w.text for w in widgets]
    assert any("vms[0].provisioners[0].file.fileRef" in t for t in texts), texts
    assert any("vms[0].provisioners[0].file.destination" in t for t in texts), texts

    # The message sits right under line 8, the line of the broken reference, with a marker
    # in the gutter; line 7 has none.
    def line_widgets(index):
        return browser.execute_script(
            "const info = window.rudderEditor.lineInfo(arguments[0]);"
            "return [(info.widgets || []).map(w => w.node.textContent),"
            " !!(info.gutterMarkers && info.gutterMarkers['problem-gutter'])];",
            index,
        )

    texts_on_8, marked_8 = line_widgets(7)
    assert any("file.fileRef" in t for t in texts_on_8) and marked_8
    texts_on_7, marked_7 = line_widgets(6)
    assert texts_on_7 == [] and not marked_7
    save_screenshot(browser, "manifest-editor.png", tmp_path)

    type_manifest(browser, FIXED)
    browser.find_element(By.ID, "validate").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "validation-summary"), "Valid"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".line-problem.error")
    browser.find_element(By.ID, "id_name").send_keys("browser-lab")
    browser.find_element(By.ID, "save").click()
    wait.until(EC.url_contains("/modules/browser-lab/"))
    assert Module.objects.get(name="browser-lab").latest_revision.text == FIXED

// The manifest editor: CodeMirror with line numbers, server-side validation shown
// beside each line (gutter marker + message under the line) and listed below.
(function () {
  "use strict";
  // The validate button names the field it checks: "manifest", or "rubric" (the same
  // editor and the same answer: {valid, errors, warnings} with paths and lines).
  const button = document.getElementById("validate");
  const field = (button && button.dataset.field) || "manifest";
  const textarea = document.getElementById("id_" + field);
  if (!textarea || !window.CodeMirror) return;
  const editor = CodeMirror.fromTextArea(textarea, {
    mode: "yaml",
    lineNumbers: true,
    indentUnit: 2,
    tabSize: 2,
    indentWithTabs: false,
    gutters: ["problem-gutter", "CodeMirror-linenumbers"],
    extraKeys: {Tab: (cm) => cm.replaceSelection("  ")},
  });
  editor.setSize(null, "32em");
  const list = document.getElementById("problems");
  const summary = document.getElementById("validation-summary");
  let widgets = [];

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function clear() {
    widgets.forEach((w) => w.clear());
    widgets = [];
    editor.clearGutter("problem-gutter");
    list.replaceChildren();
  }

  function show(result) {
    clear();
    const all = result.errors.map((p) => ({...p, severity: "error"}))
      .concat(result.warnings.map((p) => ({...p, severity: "warning"})));
    all.forEach((p) => {
      const where = p.line ? `line ${p.line}${p.column ? ", column " + p.column : ""}` : "document";
      const item = document.createElement("li");
      item.className = p.severity;
      item.textContent = `${p.severity}: ${p.path || "(top level)"} (${where}): ${p.message}`;
      if (p.line) {
        item.tabIndex = 0;
        item.addEventListener("click", () => {
          editor.focus();
          editor.setCursor({line: p.line - 1, ch: Math.max(0, (p.column || 1) - 1)});
        });
        const marker = document.createElement("span");
        marker.className = "gutter-" + p.severity;
        marker.title = p.message;
        marker.textContent = p.severity === "error" ? "●" : "▲";
        editor.setGutterMarker(p.line - 1, "problem-gutter", marker);
        const note = document.createElement("div");
        note.className = "line-problem " + p.severity;
        note.textContent = `${p.path ? p.path + ": " : ""}${p.message}`;
        widgets.push(editor.addLineWidget(p.line - 1, note, {coverGutter: false}));
      }
      list.appendChild(item);
    });
    summary.className = result.valid ? "ok" : "error";
    summary.textContent = result.valid
      ? (result.warnings.length ? `Valid, with ${result.warnings.length} warning(s).` : "Valid.")
      : `${result.errors.length} error(s).`;
  }

  button.addEventListener("click", async () => {
    editor.save();
    summary.className = "";
    summary.textContent = "Validating…";
    const body = new URLSearchParams({[field]: editor.getValue()});
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        headers: {"X-CSRFToken": csrfToken()},
        body: body,
        credentials: "same-origin",
      });
      show(await response.json());
    } catch (err) {
      summary.className = "error";
      summary.textContent = "Could not reach the server: " + err;
    }
  });

  const initial = JSON.parse(document.getElementById("initial-problems").textContent);
  if (initial) show(initial);
  window.rudderEditor = editor; // for the browser tests and the curious
})();

// Live build page: polls status.json for state and new log lines until the build ends.
(function () {
  "use strict";
  const summary = document.getElementById("build-summary");
  if (!summary) return;
  const url = summary.dataset.statusUrl;
  const logEl = document.getElementById("log");
  const follow = document.getElementById("follow");
  let after = 0;
  let delay = 1000;

  function fmtTime(iso) {
    const d = new Date(iso);
    return d.toTimeString().slice(0, 8);
  }

  function appendLines(lines) {
    if (!lines.length) return;
    const frag = document.createDocumentFragment();
    lines.forEach((l) => {
      const span = document.createElement("span");
      span.className = "line " + l.stream;
      span.textContent = `${fmtTime(l.time)} [${l.vm || "build"}] ${l.text}\n`;
      frag.appendChild(span);
      after = l.seq;
    });
    logEl.appendChild(frag);
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  }

  function render(data) {
    const status = document.getElementById("build-status");
    status.textContent = data.status;
    status.className = "status status-" + data.status.toLowerCase();
    document.getElementById("build-attempt").textContent = data.attempt;
    if (data.duration_s != null) document.getElementById("build-duration").textContent = Math.round(data.duration_s) + "s";
    const err = document.getElementById("build-error");
    err.hidden = !data.error;
    err.textContent = data.error || "";
    document.getElementById("cancel-form").hidden = data.terminal;
    data.vms.forEach((vm) => {
      const card = document.querySelector(`.vm[data-vm="${CSS.escape(vm.name)}"]`);
      if (!card) return;
      card.querySelector(".phase").textContent = vm.phase;
      card.querySelector(".vm-message").textContent = vm.message || "";
      let waiting = null;
      vm.steps.forEach((s, i) => {
        const li = card.querySelector(`.step[data-index="${i}"]`);
        if (!li) return;
        li.className = "step step-" + s.status.toLowerCase();
        li.querySelector(".step-status").textContent = s.status;
        const info = [];
        if (s.duration_s != null) info.push(s.duration_s.toFixed(1) + "s");
        if (s.exit_code != null) info.push("exit " + s.exit_code);
        if (s.message) info.push(s.message);
        li.querySelector(".step-info").textContent = info.join(" · ");
        if (s.status === "WaitingForUser") waiting = s;
      });
      const link = card.querySelector(".console-link");
      link.hidden = !vm.console_url;
      if (vm.console_url) link.href = vm.console_url;
      renderHandbuild(vm, waiting, data.now);
      renderLiveConsole(card, vm, waiting);
    });
  }

  // While the boot command is typed and the VM waits for SSH (an installer at work), its
  // screen shows in its card; it closes when provisioning starts (the Console link stays).
  function renderLiveConsole(card, vm, waiting) {
    const box = card.querySelector(".live-console");
    if (!box) return;
    const frame = box.querySelector("iframe.console-frame");
    const show = Boolean(vm.live_console && vm.console_url && !waiting);
    box.hidden = !show;
    if (!show) {
      if (frame.getAttribute("src")) frame.removeAttribute("src");
    } else if (!frame.getAttribute("src")) {
      frame.src = vm.console_url + "?embed=1";
    }
  }

  // A handbuild step waiting: its instructions beside the live console, Continue / Fail,
  // and a countdown to the step's deadline (the pause spends the step and build timeouts).
  const deadlines = new Map();
  let clockSkewMs = 0;

  function renderHandbuild(vm, step, serverNow) {
    const panel = document.querySelector(`.handbuild-panel[data-handbuild-vm="${CSS.escape(vm.name)}"]`);
    if (!panel) return;
    const frame = panel.querySelector("iframe.console-frame");
    panel.hidden = !step;
    if (!step) {
      deadlines.delete(vm.name);
      if (frame.getAttribute("src")) frame.removeAttribute("src"); // closes the console
      return;
    }
    if (serverNow) clockSkewMs = Date.parse(serverNow) - Date.now();
    panel.querySelector(".step-label").textContent = step.name;
    panel.querySelector(".instructions").textContent = step.instructions || "";
    if (step.deadline) deadlines.set(vm.name, Date.parse(step.deadline));
    if (vm.console_url && !frame.getAttribute("src")) frame.src = vm.console_url + "?embed=1";
    tickCountdown();
  }

  function fmtLeft(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
  }

  function tickCountdown() {
    deadlines.forEach((deadline, name) => {
      const panel = document.querySelector(`.handbuild-panel[data-handbuild-vm="${CSS.escape(name)}"]`);
      if (panel) panel.querySelector(".time-left").textContent = fmtLeft(deadline - (Date.now() + clockSkewMs)) + " left";
    });
  }
  setInterval(tickCountdown, 1000);

  // A failed VM kept for inspection: its time left, counted down from what the page said.
  const keptLeft = document.getElementById("kept-time-left");
  if (keptLeft) {
    const keptUntil = Date.now() + Number(keptLeft.dataset.secondsLeft) * 1000;
    setInterval(() => {
      keptLeft.textContent = fmtLeft(keptUntil - Date.now()) + " left";
    }, 1000);
  }

  async function tick() {
    try {
      const response = await fetch(`${url}?after=${after}`, {credentials: "same-origin"});
      if (response.ok) {
        const data = await response.json();
        appendLines(data.log);
        render(data);
        if (data.terminal && data.log.length === 0) return; // everything shown
        delay = data.log.length ? 300 : 1000;
      } else {
        delay = 5000;
      }
    } catch (e) {
      delay = 5000;
    }
    setTimeout(tick, delay);
  }
  tick();
})();

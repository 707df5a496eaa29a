// The lab page: the countdown to the clone's expiry, the VM tabs, and the results of
// "Check my work" as they come (names and points only: all the server sends).
(function () {
  "use strict";
  const left = document.getElementById("time-left");
  const countdown = document.getElementById("countdown");
  if (left && countdown && left.dataset.expires) {
    const end = Date.parse(left.dataset.expires);
    const tick = () => {
      const s = Math.max(0, Math.round((end - Date.now()) / 1000));
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
      countdown.textContent = s === 0 ? " (expired)"
        : ` (${h ? h + " h " : ""}${m} min ${String(sec).padStart(2, "0")} s left)`;
      left.classList.toggle("soon", s > 0 && s < 600);
    };
    tick();
    setInterval(tick, 1000);
  }
  document.querySelectorAll(".lab-vm-tabs a.badge").forEach((tab) => {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".lab-vm-tabs a.badge").forEach((t) => t.classList.remove("current-vm"));
      tab.classList.add("current-vm");
    });
  });
  const box = document.getElementById("checks");
  if (!box) return;
  const state = document.getElementById("checks-state");
  const list = document.getElementById("check-list");
  const score = document.getElementById("checks-score");
  const button = document.getElementById("check-my-work");
  function show(data) {
    state.textContent = data.state === "running" ? "Checking…" : data.state === "none" ? "No checks have run yet." : "";
    if (button) button.disabled = data.state === "running";
    list.replaceChildren(...data.checks.map((c) => {
      const li = document.createElement("li");
      li.className = c.passed ? "passed" : "failed";
      li.textContent = `${c.passed ? "✓" : "✗"} ${c.name} (${c.passed ? c.points : 0}/${c.points})`;
      return li;
    }));
    score.textContent = data.max === null || data.max === undefined ? "" : `Score ${data.score} / ${data.max}`;
  }
  async function poll() {
    try {
      const response = await fetch(box.dataset.url, {credentials: "same-origin"});
      if (response.ok) {
        const data = await response.json();
        show(data);
        if (data.state === "running") setTimeout(poll, 3000);
      }
    } catch (err) { setTimeout(poll, 10000); }
  }
  if (state.textContent.trim() === "Checking…") setTimeout(poll, 3000);
})();

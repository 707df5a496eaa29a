// Class dashboard and My labs: poll the clones' status and update the page in place.
(function () {
  "use strict";
  const root = document.querySelector("[data-status-url]");
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  if (!root) return;
  const url = root.dataset.statusUrl;
  const BUSY = new Set(["Pending", "Provisioning", "Starting", "Stopping", "Deleting"]);

  function set(el, field, text) {
    const node = el.querySelector(`[data-field="${field}"]`);
    if (node && node.textContent !== text) node.textContent = text;
    return node;
  }

  function renderClone(el, clone) {
    const badge = set(el, "status", clone.status);
    if (badge) badge.className = "status status-" + clone.status.toLowerCase();
    set(el, "error", clone.error || "");
    set(el, "note", clone.note || "");
    el.classList.toggle("busy", BUSY.has(clone.status));
    clone.vms.forEach((vm) => {
      const li = el.querySelector(`[data-vm="${CSS.escape(vm.name)}"]`);
      if (!li) return;
      set(li, "state", vm.state || "-");
      const ready = set(li, "ready", vm.ready_text || "");
      if (ready) ready.classList.toggle("ready", Boolean(vm.ready));
      set(li, "started", vm.started_via ? `${vm.started_via} start` : "");
      set(li, "start-note", vm.start_note || "");
      if (vm.ssh_port) set(li, "ssh", `ssh 127.0.0.1:${vm.ssh_port}`);
    });
  }

  function sameClones(clones) {
    const shown = [...root.querySelectorAll("[data-clone]")].map((e) => e.dataset.clone).sort();
    const now = clones.map((c) => String(c.id)).sort();
    return shown.join(",") === now.join(",");
  }

  let delay = 2000;
  async function tick() {
    try {
      const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (response.ok) {
        const data = await response.json();
        if (!sameClones(data.clones)) {
          // Clones were launched or deleted: the server renders rows with their buttons.
          if (!document.activeElement || !document.activeElement.form) window.location.reload();
        } else {
          data.clones.forEach((c) => {
            const el = root.querySelector(`[data-clone="${c.id}"]`);
            if (el) renderClone(el, c);
          });
        }
        const booting = (c) => c.vms.some((vm) => vm.ready_text === "booting");
        delay = data.clones.some((c) => BUSY.has(c.status) || booting(c)) ? 1000 : 3000;
      } else {
        delay = 10000;
      }
    } catch (e) {
      delay = 10000;
    }
    setTimeout(tick, delay);
  }
  setTimeout(tick, 500);
})();

// A VM console: noVNC over the portal's WebSocket, with reconnect, scaling, full screen,
// Ctrl+Alt+Del and "paste as keystrokes" (QEMU's VNC has no clipboard).
//
// Every connect asks the portal for a fresh one-time token (POST data-token-url), so a
// reconnect after a reboot or a dropped network works without reloading the page. The
// state is mirrored in .console-status[data-state]: connecting, connected, disconnected,
// unavailable (the portal refused: no right to the VM, or the VM is gone; no more retries),
// ended (the portal closed the console at its maximum session time; reload to reopen).
// The portal says why it closed a console with the close code (CLOSE_*) and reason; where
// the server drops the reason (daphne does), the page asks the token endpoint why.

const XK = { Return: 0xff0d, Tab: 0xff09, ShiftLeft: 0xffe1 };
const RETRY_MAX_MS = 10000;
const KEY_PAUSE_MS = 12; // between characters: guests drop keys that come too fast
const LINE_PAUSE_MS = 120; // after Enter: give a shell time to run the line
// Close codes after which reconnecting is pointless (consoles/consumer.py).
const CLOSE_REVOKED = 4403;
const CLOSE_TIME_LIMIT = 4408;

// US layout: character -> [X keysym, DOM code, shift held].
function usKeys() {
  const table = new Map();
  for (const c of "abcdefghijklmnopqrstuvwxyz") {
    const code = "Key" + c.toUpperCase();
    table.set(c, [c.charCodeAt(0), code, false]);
    table.set(c.toUpperCase(), [c.toUpperCase().charCodeAt(0), code, true]);
  }
  const shiftedDigits = ")!@#$%^&*(";
  for (let d = 0; d < 10; d++) {
    table.set(String(d), [48 + d, "Digit" + d, false]);
    table.set(shiftedDigits[d], [shiftedDigits.charCodeAt(d), "Digit" + d, true]);
  }
  const pairs = {
    Minus: "-_", Equal: "=+", BracketLeft: "[{", BracketRight: "]}", Backslash: "\\|",
    Semicolon: ";:", Quote: "'\"", Backquote: "`~", Comma: ",<", Period: ".>", Slash: "/?",
  };
  for (const [code, chars] of Object.entries(pairs)) {
    table.set(chars[0], [chars.charCodeAt(0), code, false]);
    table.set(chars[1], [chars.charCodeAt(1), code, true]);
  }
  table.set(" ", [0x20, "Space", false]);
  table.set("\n", [XK.Return, "Enter", false]);
  table.set("\t", [XK.Tab, "Tab", false]);
  return table;
}
const KEYS = usKeys();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ConsoleView {
  constructor(root, RFB) {
    this.root = root;
    this.RFB = RFB;
    this.rfb = null;
    this.retryMs = 1000;
    this.stopped = false;
    this.typing = null;
    this.$ = (selector) => root.querySelector(selector);
    this.screen = this.$(".console-screen");
    this.status = this.$(".console-status");
    this.bindTools();
  }

  setState(state, text) {
    this.status.dataset.state = state;
    this.status.textContent = text;
    this.root.dataset.state = state;
  }

  async token() {
    const response = await fetch(this.root.dataset.tokenUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": this.root.dataset.csrf },
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 403 || response.status === 404) {
      const error = new Error(body.error || response.statusText);
      error.final = true;
      throw error;
    }
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  async connect() {
    if (this.stopped) return;
    this.setState("connecting", "Connecting…");
    let issued;
    try {
      issued = await this.token();
    } catch (error) {
      if (error.final) {
        this.stopped = true;
        this.setState("unavailable", "Console unavailable: " + error.message);
        return;
      }
      this.retry("could not get a console token");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    // Our own socket (noVNC takes one), to read the close frame's code and reason.
    // The token travels as a subprotocol, never in a URL.
    const socket = new WebSocket(scheme + location.host + issued.ws_path, issued.subprotocols);
    let closed = null;
    socket.addEventListener("close", (event) => (closed = event));
    const rfb = new this.RFB(this.screen, socket, {
      shared: true, // other viewers (an instructor, a student) stay connected
    });
    rfb.scaleViewport = this.$(".console-scale").checked;
    rfb.resizeSession = false;
    rfb.focusOnClick = true;
    rfb.background = "#111";
    rfb.addEventListener("connect", () => {
      this.retryMs = 1000;
      this.setState("connected", "Connected");
    });
    rfb.addEventListener("disconnect", () => {
      if (this.rfb === rfb) this.rfb = null;
      if (closed && (closed.code === CLOSE_REVOKED || closed.code === CLOSE_TIME_LIMIT)) {
        this.ended(closed.code, closed.reason);
        return;
      }
      this.retry("disconnected");
    });
    rfb.addEventListener("securityfailure", (event) => {
      this.setState("disconnected", "Refused by the VM: " + (event.detail.reason || "security failure"));
    });
    this.rfb = rfb;
  }

  // The portal closed the console for good: say why, and do not reconnect.
  async ended(code, reason) {
    this.stopped = true;
    if (code === CLOSE_TIME_LIMIT) {
      const limit = `this console was open for the maximum time (${this.root.dataset.maxSession})`;
      this.setState("ended", `Console closed: ${reason || limit}. Reload the page to open it again.`);
      return;
    }
    let why = reason;
    if (!why) {
      try {
        await this.token(); // still allowed after all (a token unused expires in a minute)
      } catch (error) {
        if (error.final) why = error.message;
      }
    }
    this.setState("unavailable", `Console closed: ${why || "your access was revoked"}.`);
  }

  retry(why) {
    if (this.stopped) return;
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    this.setState("disconnected", `Console ${why}; reconnecting in ${Math.round(wait / 1000)}s…`);
    setTimeout(() => this.connect(), wait);
  }

  bindTools() {
    this.$(".console-scale").addEventListener("change", (event) => {
      if (this.rfb) this.rfb.scaleViewport = event.target.checked;
    });
    this.$(".console-fullscreen").addEventListener("click", () => {
      if (document.fullscreenElement) document.exitFullscreen();
      else this.root.requestFullscreen().catch(() => {});
    });
    this.$(".console-cad").addEventListener("click", () => {
      if (this.rfb) this.rfb.sendCtrlAltDel();
      if (this.rfb) this.rfb.focus();
    });
    const toggle = this.$(".console-paste-toggle");
    toggle.addEventListener("click", () => {
      const panel = this.$(".console-paste");
      panel.hidden = !panel.hidden;
      toggle.setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) this.$(".console-paste-text").focus();
    });
    this.$(".console-paste-send").addEventListener("click", () => this.paste());
    this.$(".console-paste-stop").addEventListener("click", () => {
      if (this.typing) this.typing.cancelled = true;
    });
  }

  // Type text into the guest as key presses, pacing them so the guest keeps up.
  async paste() {
    const text = this.$(".console-paste-text").value.replace(/\r\n?/g, "\n");
    const progress = this.$(".console-paste-progress");
    if (!this.rfb || this.typing || !text) return;
    const job = (this.typing = { cancelled: false });
    this.$(".console-paste-send").disabled = true;
    this.$(".console-paste-stop").disabled = false;
    let typed = 0;
    let skipped = 0;
    for (const ch of text) {
      if (job.cancelled || !this.rfb) break;
      const key = KEYS.get(ch);
      if (!key) {
        skipped++;
        continue;
      }
      this.typeKey(key);
      typed++;
      if (typed % 20 === 0) progress.textContent = `typed ${typed} of ${text.length}`;
      await sleep(ch === "\n" ? LINE_PAUSE_MS : KEY_PAUSE_MS);
    }
    progress.textContent =
      `${job.cancelled ? "stopped after" : "typed"} ${typed} character(s)` +
      (skipped ? `; skipped ${skipped} that a US keyboard cannot type` : "");
    this.typing = null;
    this.$(".console-paste-send").disabled = false;
    this.$(".console-paste-stop").disabled = true;
    if (this.rfb) this.rfb.focus();
  }

  typeKey([keysym, code, shift]) {
    if (shift) this.rfb.sendKey(XK.ShiftLeft, "ShiftLeft", true);
    this.rfb.sendKey(keysym, code, true);
    this.rfb.sendKey(keysym, code, false);
    if (shift) this.rfb.sendKey(XK.ShiftLeft, "ShiftLeft", false);
  }
}

async function main() {
  const roots = document.querySelectorAll(".console[data-token-url]");
  if (!roots.length) return;
  const { default: RFB } = await import(roots[0].dataset.novnc);
  roots.forEach((root) => {
    const view = new ConsoleView(root, RFB);
    root.consoleView = view; // for tests and the browser console
    view.connect();
  });
}

main();

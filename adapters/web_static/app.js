// The chat page. Conversation ids live in this browser's localStorage; the history lives on
// the server. Answers stream in over server-sent events read from a fetch() response.
// Everything the model writes goes through marked and then DOMPurify before it reaches the
// page; what the user writes is only ever set as text.

const { marked, DOMPurify } = window;

const KEYS = {
  conversations: "chatbot.conversations",
  current: "chatbot.current",
  token: "chatbot.token",
};
const CONVERSATION_ID = /^[A-Za-z0-9_-]{1,64}$/;

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  list: $("conversations"),
  newConversation: $("new-conversation"),
  toggleSidebar: $("toggle-sidebar"),
  title: $("chat-title"),
  forget: $("forget"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
};

// ---- state ------------------------------------------------------------------------------

let token = localStorage.getItem(KEYS.token) || "";
let conversations = loadConversations(); // [{id, title, updated}], newest first
let current = null; // the open conversation's id
let openSeq = 0; // bumps on each open, so a late history answer for another one is dropped
const streaming = new Set(); // conversation ids with an answer on its way

function loadConversations() {
  try {
    const stored = JSON.parse(localStorage.getItem(KEYS.conversations) || "[]");
    return stored.filter((c) => c && CONVERSATION_ID.test(c.id));
  } catch {
    return [];
  }
}

function saveConversations() {
  localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
}

function conversation(id) {
  return conversations.find((c) => c.id === id);
}

function randomHex(bytes) {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

// crypto.randomUUID exists only in secure contexts (https, localhost)
const newMessageId = () => (crypto.randomUUID ? crypto.randomUUID() : randomHex(16));

function setToken(value) {
  token = value;
  if (value) localStorage.setItem(KEYS.token, value);
  else localStorage.removeItem(KEYS.token);
}

// `#token=<JWT>`: kept, then taken out of the address bar (and so out of the history)
function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("token")) return;
  const value = (params.get("token") || "").trim();
  if (value) setToken(value);
  history.replaceState(null, "", location.pathname + location.search);
}

// ---- API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const messagesPath = (cid) => `api/conversations/${encodeURIComponent(cid)}/messages`;

async function api(method, path, { json, stream = false } = {}) {
  const headers = { Accept: stream ? "text/event-stream" : "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "Network error: the server could not be reached.");
  }
  if (response.status === 401) {
    showTokenForm();
    throw new ApiError(401, "Not signed in: paste a token above, then try again.");
  }
  if (!response.ok) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.error === "string" ? `: ${body.error.slice(0, 200)}` : "";
    } catch {
      // not JSON: the status says enough
    }
    throw new ApiError(response.status, `The server answered ${response.status}${detail}.`);
  }
  return response;
}

// Server-sent events from a fetch() body (EventSource cannot POST): yields {type, data}.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an event not closed by a blank line is dropped, as the spec says
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) !== -1) {
        // a "\r" at the very end may be the first half of a "\r\n" still on its way
        if (buffer[end] === "\r" && end === buffer.length - 1) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (data.length) yield { type: type || "message", data: data.join("\n") };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let fieldValue = colon === -1 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") type = fieldValue;
        else if (field === "data") data.push(fieldValue);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- rendering --------------------------------------------------------------------------

marked.use({ gfm: true, breaks: true });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const PURIFY = {
  USE_PROFILES: { html: true }, // no SVG, no MathML
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true, // no second parse of the cleaned HTML
};

// Markdown from the model -> HTML -> DOMPurify -> the page. Nothing else writes HTML.
function renderMarkdown(target, text) {
  let fragment;
  try {
    fragment = DOMPurify.sanitize(marked.parse(text), PURIFY);
  } catch {
    target.textContent = text; // shown as plain text if the Markdown parser gives up
    return;
  }
  target.replaceChildren(fragment);
  for (const pre of target.querySelectorAll("pre")) addCopyButton(pre);
}

function addCopyButton(pre) {
  const box = document.createElement("div");
  box.className = "code";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", () => copy(pre.textContent, button));
  pre.replaceWith(box);
  box.append(button, pre);
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no Clipboard API outside secure contexts (plain http on a LAN address)
    const area = document.createElement("textarea");
    area.className = "offscreen";
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function addBubble(role, text) {
  ui.messages.querySelector(".hint")?.remove();
  const bubble = document.createElement("div");
  bubble.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  bubble.append(body);
  if (role === "user") body.textContent = text;
  else renderMarkdown(body, text);
  ui.messages.append(bubble);
  return bubble;
}

function showNotice(text, retry) {
  const notice = document.createElement("div");
  notice.className = "notice";
  notice.textContent = text;
  if (retry) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Try again";
    button.addEventListener("click", retry);
    notice.append(" ", button);
  }
  ui.messages.append(notice);
}

function showHint() {
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Say hello. Commands such as /help or /reset go to the bot as they are.";
  ui.messages.append(hint);
}

// ---- sending and streaming --------------------------------------------------------------

async function send(text) {
  const cid = current;
  const entry = conversation(cid);
  if (!entry.title) entry.title = text.slice(0, 60);
  entry.updated = Date.now();
  conversations = [entry, ...conversations.filter((c) => c !== entry)];
  saveConversations();
  renderList();
  addBubble("user", text);
  const bubble = addBubble("assistant", "");
  scrollToBottom();
  await stream(cid, text, newMessageId(), bubble);
}

// One attempt at an answer. A retry sends the same message id, so the bot answers it once.
async function stream(cid, text, id, bubble) {
  const body = bubble.querySelector(".body");
  bubble.querySelector(".error")?.remove();
  body.replaceChildren();
  bubble.dataset.state = "waiting";
  bubble.setAttribute("aria-busy", "true");
  streaming.add(cid);
  updateComposer();

  let answer = "";
  let frame = 0;
  const paint = () => {
    frame = 0;
    const follow = nearBottom();
    renderMarkdown(body, answer);
    if (follow) scrollToBottom();
  };
  try {
    const response = await api("POST", messagesPath(cid), { json: { text, id }, stream: true });
    let done = false;
    for await (const event of readEvents(response)) {
      if (event.type === "delta") {
        answer += JSON.parse(event.data).text ?? "";
        bubble.dataset.state = "streaming";
        if (!frame) frame = requestAnimationFrame(paint);
      } else if (event.type === "done") {
        answer = JSON.parse(event.data).text ?? answer;
        done = true;
        break;
      } else if (event.type === "error") {
        const data = JSON.parse(event.data);
        throw new Error(data.text || data.error || "The bot could not answer.");
      }
    }
    if (!done) throw new Error("The connection closed before the answer was complete.");
    if (frame) cancelAnimationFrame(frame);
    paint();
    bubble.dataset.state = "done";
  } catch (error) {
    if (frame) cancelAnimationFrame(frame);
    if (answer) paint();
    bubble.dataset.state = "error";
    const box = document.createElement("div");
    box.className = "error";
    box.textContent = error instanceof ApiError ? error.message : `${error.message || error}`;
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Resend";
    retry.addEventListener("click", () => {
      if (!streaming.has(cid)) stream(cid, text, id, bubble);
    });
    box.append(" ", retry);
    bubble.append(box);
  } finally {
    bubble.removeAttribute("aria-busy");
    streaming.delete(cid);
    updateComposer();
  }
}

function updateComposer() {
  ui.send.disabled = streaming.has(current);
}

// ---- conversations ----------------------------------------------------------------------

function renderList() {
  ui.list.replaceChildren(
    ...conversations.map((c) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = c.title || "New conversation";
      button.title = c.title || c.id;
      button.dataset.id = c.id;
      if (c.id === current) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => {
        setSidebar(false);
        if (c.id !== current) openConversation(c.id);
      });
      item.append(button);
      return item;
    }),
  );
  ui.title.textContent = conversation(current)?.title || "New conversation";
}

function newConversation() {
  // an untouched conversation is reused rather than piling up empty ones
  const empty = conversations.find((c) => !c.title);
  if (empty) return openConversation(empty.id);
  const entry = { id: `c-${randomHex(12)}`, title: "", updated: Date.now() };
  conversations.unshift(entry);
  saveConversations();
  return openConversation(entry.id);
}

async function openConversation(cid) {
  current = cid;
  localStorage.setItem(KEYS.current, cid);
  const seq = ++openSeq;
  renderList();
  updateComposer();
  ui.messages.replaceChildren();
  ui.input.focus();
  let messages = [];
  try {
    const response = await api("GET", messagesPath(cid));
    messages = (await response.json()).messages || [];
  } catch (error) {
    if (seq !== openSeq) return;
    if (!(error instanceof ApiError && error.status === 404)) {
      showNotice(`Could not load this conversation. ${error.message}`, () =>
        openConversation(cid),
      );
      return;
    }
  }
  if (seq !== openSeq) return;
  for (const message of messages) {
    if (message.role === "user" || message.role === "assistant") {
      addBubble(message.role, String(message.text ?? ""));
    }
  }
  const entry = conversation(cid);
  const first = messages.find((m) => m.role === "user");
  if (entry && !entry.title && first) {
    entry.title = String(first.text).slice(0, 60);
    saveConversations();
    renderList();
  }
  if (!ui.messages.childElementCount) showHint();
  scrollToBottom();
}

async function forgetConversation() {
  const entry = conversation(current);
  if (!entry) return;
  const name = entry.title || "this conversation";
  if (!confirm(`Forget “${name}”? The bot deletes its history.`)) return;
  try {
    await api("DELETE", `api/conversations/${encodeURIComponent(entry.id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      showNotice(`Could not forget it. ${error.message}`);
      return;
    }
  }
  conversations = conversations.filter((c) => c !== entry);
  saveConversations();
  if (conversations.length) openConversation(conversations[0].id);
  else newConversation();
}

// ---- chrome -----------------------------------------------------------------------------

function setSidebar(open) {
  ui.app.classList.toggle("sidebar-open", open);
  ui.toggleSidebar.setAttribute("aria-expanded", String(open));
}

function showTokenForm() {
  ui.tokenForm.hidden = false;
  ui.tokenInput.focus();
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text || streaming.has(current)) return;
  ui.input.value = "";
  autosize();
  send(text);
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.input.addEventListener("input", autosize);

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = ui.tokenInput.value.trim();
  if (!value) return;
  setToken(value);
  ui.tokenInput.value = "";
  ui.tokenForm.hidden = true;
  openConversation(current);
});

ui.newConversation.addEventListener("click", () => {
  setSidebar(false);
  newConversation();
});
ui.forget.addEventListener("click", forgetConversation);
ui.toggleSidebar.addEventListener("click", () =>
  setSidebar(!ui.app.classList.contains("sidebar-open")),
);

// ---- start ------------------------------------------------------------------------------

takeTokenFromFragment();
const last = localStorage.getItem(KEYS.current);
if (conversation(last)) openConversation(last);
else if (conversations.length) openConversation(conversations[0].id);
else newConversation();

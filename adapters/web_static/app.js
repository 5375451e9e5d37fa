// The chat page. Conversation ids live in this browser's localStorage; the history lives on
// the server. Answers stream in over server-sent events read from a fetch() response.
// Everything the model writes goes through marked and then DOMPurify before it reaches the
// page; what the user writes is only ever set as text. Files go both ways as base64 in the
// same JSON (the POST's `attachments`, the `file` event) and are shown as <img>, <audio> or
// a download link built with DOM calls. A tool that needs a yes comes as an `approval` event:
// a card with Approve and Deny; a press POSTs the decision and its response streams the
// continued answer into a new assistant message.

const { marked, DOMPurify } = window;

const KEYS = {
  conversations: "chatbot.conversations",
  current: "chatbot.current",
  token: "chatbot.token",
};
const CONVERSATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_FILES = 4; // the API's bound on one message
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
// shown inline; anything else (SVG included) is only offered as a download
const SHOWN_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

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
  attach: $("attach"),
  fileInput: $("file-input"),
  pending: $("pending"),
  chat: $("chat"),
};

// ---- state ------------------------------------------------------------------------------

let token = localStorage.getItem(KEYS.token) || "";
let conversations = loadConversations(); // [{id, title, updated}], newest first
let current = null; // the open conversation's id
let openSeq = 0; // bumps on each open, so a late history answer for another one is dropped
const streaming = new Set(); // conversation ids with an answer on its way
let pending = []; // files for the next message: [{name, mime_type, data (base64)}]

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
  constructor(status, message, detail = "") {
    super(message);
    this.status = status;
    this.detail = detail; // the server's own words, when it gave some
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
      detail = typeof body.error === "string" ? body.error.slice(0, 200) : "";
    } catch {
      // not JSON: the status says enough
    }
    const said = detail ? `: ${detail}` : "";
    throw new ApiError(response.status, `The server answered ${response.status}${said}.`, detail);
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

function addBubble(role, text, files = []) {
  ui.messages.querySelector(".hint")?.remove();
  const bubble = document.createElement("div");
  bubble.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  bubble.append(body);
  if (role === "user") body.textContent = text;
  else renderMarkdown(body, text);
  if (files.length) {
    const box = document.createElement("div");
    box.className = "files";
    box.append(...files.map(fileChip));
    bubble.append(box);
  }
  ui.messages.append(bubble);
  return bubble;
}

// ---- files ------------------------------------------------------------------------------

const dataUrl = (mime, data) => `data:${mime};base64,${data}`;

// A small picture (images) or the name of a file the user attaches.
function fileChip(file) {
  const chip = document.createElement("span");
  chip.className = "chip";
  chip.title = file.name;
  if (SHOWN_IMAGES.has(file.mime_type)) {
    const thumb = document.createElement("img");
    thumb.className = "thumb";
    thumb.alt = file.name;
    thumb.src = dataUrl(file.mime_type, file.data);
    chip.append(thumb);
  }
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = file.name;
  chip.append(name);
  return chip;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve({ name: file.name, mime_type: file.type, data: url.slice(url.indexOf(",") + 1) });
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attachFiles(files) {
  const room = MAX_FILES - pending.length;
  const chosen = Array.from(files).slice(0, Math.max(room, 0));
  if (files.length > chosen.length) {
    showNotice(`At most ${MAX_FILES} files go with one message.`);
  }
  for (const file of chosen) {
    try {
      pending.push(await readFile(file));
    } catch {
      showNotice(`Could not read ${file.name}.`);
    }
  }
  renderPending();
}

function renderPending() {
  ui.pending.hidden = pending.length === 0;
  ui.pending.replaceChildren(
    ...pending.map((file, index) => {
      const chip = fileChip(file);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${file.name}`);
      remove.addEventListener("click", () => {
        pending.splice(index, 1);
        renderPending();
      });
      chip.append(remove);
      return chip;
    }),
  );
}

function base64Bytes(data) {
  const text = atob(data);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// A `file` event: an image or audio shown inline, anything else a download link; all
// with a link that saves it. The link's blob is typed octet-stream, so opening it never
// renders the server's type (an HTML file stays a download).
function renderFile(bubble, file) {
  const name = typeof file.name === "string" && file.name ? file.name : "file";
  const mime = typeof file.mime_type === "string" ? file.mime_type.toLowerCase() : "";
  const data = typeof file.data === "string" ? file.data : "";
  if (!BASE64.test(data)) return;
  let box = bubble.querySelector(".files");
  if (!box) {
    box = document.createElement("div");
    box.className = "files";
    bubble.querySelector(".body").after(box);
  }
  const figure = document.createElement("figure");
  figure.className = "file";
  if (file.kind === "image" && SHOWN_IMAGES.has(mime)) {
    const img = document.createElement("img");
    img.alt = name;
    img.src = dataUrl(mime, data);
    figure.append(img);
  } else if (file.kind === "audio" && /^audio\/[\w.+-]+$/.test(mime)) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = dataUrl(mime, data);
    figure.append(audio);
  }
  const caption = document.createElement("figcaption");
  if (typeof file.caption === "string" && file.caption) {
    const text = document.createElement("div");
    text.className = "caption";
    renderMarkdown(text, file.caption);
    caption.append(text);
  }
  const link = document.createElement("a");
  link.className = "download";
  link.download = name;
  link.textContent = name;
  link.href = URL.createObjectURL(
    new Blob([base64Bytes(data)], { type: "application/octet-stream" }),
  );
  caption.append(link);
  figure.append(caption);
  box.append(figure);
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

async function send(text, files) {
  const cid = current;
  const entry = conversation(cid);
  if (!entry.title) entry.title = (text || files[0]?.name || "").slice(0, 60);
  entry.updated = Date.now();
  conversations = [entry, ...conversations.filter((c) => c !== entry)];
  saveConversations();
  renderList();
  addBubble("user", text, files);
  const bubble = addBubble("assistant", "");
  scrollToBottom();
  await stream(cid, text, newMessageId(), bubble, files);
}

// One attempt at an answer. A retry sends the same message id, so the bot answers it once.
async function stream(cid, text, id, bubble, files = []) {
  bubble.querySelector(".error")?.remove();
  bubble.querySelector(".files")?.remove();
  bubble.querySelector(".body").replaceChildren();
  startAnswer(bubble, cid);
  try {
    const message = files.length ? { text, id, attachments: files } : { text, id };
    const response = await api("POST", messagesPath(cid), { json: message, stream: true });
    await readAnswer(response, bubble, cid);
  } catch (error) {
    failAnswer(bubble, error, () => {
      if (!streaming.has(cid)) stream(cid, text, id, bubble, files);
    });
  } finally {
    endAnswer(bubble, cid);
  }
}

function startAnswer(bubble, cid) {
  bubble.dataset.state = "waiting";
  bubble.setAttribute("aria-busy", "true");
  streaming.add(cid);
  updateComposer();
}

function endAnswer(bubble, cid) {
  bubble.removeAttribute("aria-busy");
  streaming.delete(cid);
  updateComposer();
}

// An answer's events into its bubble (approval cards go right after it), until `done`;
// throws when the stream breaks off or brings an `error`. `settled` is a press's outcome.
async function readAnswer(response, bubble, cid, { onSettled } = {}) {
  const body = bubble.querySelector(".body");
  let answer = "";
  let frame = 0;
  let anchor = bubble; // where the next approval card goes
  let done = false;
  const paint = () => {
    frame = 0;
    const follow = nearBottom();
    renderMarkdown(body, answer);
    if (follow) scrollToBottom();
  };
  try {
    for await (const event of readEvents(response)) {
      if (event.type === "delta") {
        answer += JSON.parse(event.data).text ?? "";
        bubble.dataset.state = "streaming";
        if (!frame) frame = requestAnimationFrame(paint);
      } else if (event.type === "file") {
        const follow = nearBottom();
        renderFile(bubble, JSON.parse(event.data));
        if (follow) scrollToBottom();
      } else if (event.type === "approval") {
        const card = approvalCard(JSON.parse(event.data), cid);
        if (card) {
          anchor.after(card);
          anchor = card;
        }
      } else if (event.type === "settled") {
        onSettled?.(JSON.parse(event.data));
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
  } finally {
    if (frame) cancelAnimationFrame(frame);
    if (done || answer) paint();
  }
  bubble.dataset.state = "done";
}

function failAnswer(bubble, error, retry) {
  bubble.dataset.state = "error";
  const box = document.createElement("div");
  box.className = "error";
  box.textContent = error instanceof ApiError ? error.message : `${error.message || error}`;
  if (retry) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "retry";
    button.textContent = "Resend";
    button.addEventListener("click", retry);
    box.append(" ", button);
  }
  bubble.append(box);
}

// ---- approvals --------------------------------------------------------------------------

// An `approval` event: what the bot wants to do (Markdown, sanitised like answers) and
// Approve / Deny. The card never holds anything that could run: buttons are made here.
function approvalCard(request, cid) {
  if (typeof request.id !== "string" || !request.id) return null;
  const card = document.createElement("div");
  card.className = "msg approval";
  card.dataset.id = request.id;
  card.dataset.state = "pending";
  const body = document.createElement("div");
  body.className = "body";
  renderMarkdown(body, typeof request.text === "string" ? request.text : "");
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const [label, approve] of [
    ["Approve", true],
    ["Deny", false],
  ]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = approve ? "approve" : "deny";
    button.textContent = label;
    button.addEventListener("click", () => decide(card, cid, approve));
    actions.append(button);
  }
  card.append(body, actions);
  return card;
}

function settleCard(card, text, outcome) {
  card.querySelector(".actions")?.remove();
  card.querySelector(".error")?.remove();
  card.dataset.state = "settled";
  card.dataset.outcome = outcome;
  const result = document.createElement("div");
  result.className = "outcome";
  renderMarkdown(result, text);
  card.append(result);
}

// A press: the server settles the request (or says why not: not yours, already decided)
// and streams the continued answer, shown as a new assistant message.
async function decide(card, cid, approve) {
  if (card.dataset.state !== "pending") return;
  card.dataset.state = "deciding";
  for (const button of card.querySelectorAll(".actions button")) button.disabled = true;
  card.querySelector(".error")?.remove();
  const bubble = addBubble("assistant", "");
  scrollToBottom();
  startAnswer(bubble, cid);
  let response;
  try {
    const path = `api/approvals/${encodeURIComponent(card.dataset.id)}`;
    response = await api("POST", path, { json: { approve }, stream: true });
  } catch (error) {
    bubble.remove();
    endAnswer(bubble, cid);
    if (error instanceof ApiError && (error.status === 403 || error.status === 410)) {
      settleCard(card, error.detail || error.message, "refused");
      return;
    }
    card.dataset.state = "pending"; // nothing was decided: the buttons work again
    for (const button of card.querySelectorAll(".actions button")) button.disabled = false;
    const box = document.createElement("div");
    box.className = "error";
    box.textContent = error.message;
    card.append(box);
    return;
  }
  try {
    await readAnswer(response, bubble, cid, {
      onSettled: (settled) => settleCard(card, String(settled.text ?? ""), settled.outcome),
    });
  } catch (error) {
    failAnswer(bubble, error);
  } finally {
    endAnswer(bubble, cid);
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
  for (const link of ui.messages.querySelectorAll("a.download")) URL.revokeObjectURL(link.href);
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
  if ((!text && !pending.length) || streaming.has(current)) return;
  const files = pending;
  pending = [];
  renderPending();
  ui.input.value = "";
  autosize();
  send(text, files);
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.input.addEventListener("input", autosize);

ui.attach.addEventListener("click", () => ui.fileInput.click());
ui.fileInput.addEventListener("change", async () => {
  const files = Array.from(ui.fileInput.files);
  ui.fileInput.value = ""; // the same file may be chosen again
  await attachFiles(files);
  ui.input.focus();
});
ui.input.addEventListener("paste", (event) => {
  const files = event.clipboardData?.files;
  if (files?.length) {
    event.preventDefault();
    attachFiles(files);
  }
});
ui.chat.addEventListener("dragover", (event) => {
  if (event.dataTransfer?.types.includes("Files")) event.preventDefault();
});
ui.chat.addEventListener("drop", (event) => {
  if (!event.dataTransfer?.files.length) return;
  event.preventDefault();
  attachFiles(event.dataTransfer.files);
});

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

// The chat page: one room, over the tidings hub.
//
// The page never says who its user is: the hub asks the app (the connect
// hook), which reads the session cookie. Messages go out with
// hub.publish(); the app's publish hook filters and stores them and
// publishes the stored message (its id and time) to every member. Older
// messages, the rooms and joining one come from the app through hub.rpc().

import { Hub } from "/tidings.js";

const $ = (id) => document.getElementById(id);
const config = document.body.dataset;
const ROOM = config.room;
const CHANNEL = `rooms:${ROOM}`;

function hubUrl() {
  if (config.hubUrl) return config.hubUrl;
  // The page's own host name: its cookies, set for that host, go with the
  // WebSocket to the hub's port.
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.hubPort}/ws`;
}

const hub = new Hub(hubUrl());
window.hub = hub; // to play with in the console
let sub = null; // the room's Subscription, once a member

// -- the state of the page, for people (#status) and tests (data-state) ------------

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").dataset.state = state;
  $("status").querySelector(".label").textContent = text;
}

hub.on("connect", () => {
  setState(sub ? "recovering" : "connected", "connected");
  loadRooms();
});
hub.on("disconnect", ({ code, reconnect, delay }) => {
  if (code === 4001) {
    // The app did not know this browser's session: log in again.
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  } else if (reconnect) {
    setState("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
  } else {
    setState("closed", `disconnected (${code})`);
  }
});
hub.on("error", (error) => console.warn("hub:", error));

function showError(text) {
  $("error").textContent = text;
}

// -- rooms -----------------------------------------------------------------------------

async function loadRooms() {
  let rooms;
  try {
    ({ rooms } = await hub.rpc("rooms.list", {}));
  } catch (error) {
    showError(`Could not load the rooms: ${error.message}`);
    return;
  }
  const list = $("rooms");
  list.replaceChildren();
  for (const room of rooms) {
    const li = document.createElement("li");
    li.dataset.room = room.id;
    if (room.member) {
      const a = document.createElement("a");
      a.href = `/rooms/${encodeURIComponent(room.id)}`;
      a.textContent = `#${room.id}`;
      if (room.id === ROOM) a.setAttribute("aria-current", "page");
      li.append(a);
    } else {
      const name = document.createElement("span");
      name.textContent = `#${room.id}`;
      const join = document.createElement("button");
      join.type = "button";
      join.className = "join-button";
      join.textContent = "Join";
      join.addEventListener("click", () => joinRoom(room.id));
      li.append(name, join);
    }
    list.append(li);
  }
  const here = rooms.find((room) => room.id === ROOM);
  if (here?.member) enter();
  else if (!sub) {
    $("join").hidden = false;
    setState("not-member", "not a member");
  }
}

async function joinRoom(room) {
  try {
    await hub.rpc("rooms.join", { room });
  } catch (error) {
    showError(`Could not join #${room}: ${error.message}`);
    return;
  }
  if (room === ROOM) loadRooms();
  else location.assign(`/rooms/${encodeURIComponent(room)}`);
}
$("join-room").addEventListener("click", () => joinRoom(ROOM));

// -- messages --------------------------------------------------------------------------

const list = $("messages");
const shown = new Map(); // message id -> its <li>
let oldest = null; // the ids of the oldest and newest messages shown
let newest = null;

const timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

// Show a stored message ({id, room, user, name, avatar, text, at}) in id
// order, once, wherever it came from: live, recovered, or history.
function show(message) {
  if (typeof message?.id !== "number" || shown.has(message.id)) return;
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.id = message.id;
  if (message.user === config.user) li.classList.add("mine");
  const avatar = document.createElement("span");
  avatar.className = "avatar";
  avatar.textContent = message.avatar;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = message.name;
  const time = document.createElement("time");
  const at = new Date(message.at * 1000);
  time.dateTime = at.toISOString();
  time.textContent = timeFormat.format(at);
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = message.text;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.append(name, " ", time);
  const body = document.createElement("div");
  body.append(meta, text);
  li.append(avatar, body);

  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  let after = list.lastElementChild; // usually the newest goes last
  while (after && Number(after.dataset.id) > message.id) after = after.previousElementSibling;
  if (after) after.after(li);
  else list.prepend(li);
  shown.set(message.id, li);
  oldest = oldest === null ? message.id : Math.min(oldest, message.id);
  newest = newest === null ? message.id : Math.max(newest, message.id);
  if (atBottom || li.classList.contains("mine")) list.scrollTop = list.scrollHeight;
}

// The newest page, when the page opens.
async function loadNewest() {
  const page = await hub.rpc("history.older", { room: ROOM, before: null });
  page.messages.forEach(show);
  list.scrollTop = list.scrollHeight;
  $("older").hidden = !page.more;
}

// What came after the newest message shown: when the hub could not recover
// what this page missed (it restarted, say), the app's database has it.
async function catchUp() {
  if (newest === null) return loadNewest();
  for (;;) {
    const page = await hub.rpc("history.newer", { room: ROOM, after: newest });
    page.messages.forEach(show);
    if (!page.more) return;
  }
}

$("older").addEventListener("click", async () => {
  const button = $("older");
  button.disabled = true;
  try {
    const page = await hub.rpc("history.older", { room: ROOM, before: oldest });
    const fromBottom = list.scrollHeight - list.scrollTop;
    page.messages.forEach(show);
    list.scrollTop = list.scrollHeight - fromBottom; // stay where the reader was
    button.hidden = !page.more;
  } catch (error) {
    showError(`Could not load older messages: ${error.message}`);
  } finally {
    button.disabled = false;
  }
});

// -- who is online ---------------------------------------------------------------------

const online = new Map(); // client id -> {client, user, info}
const collator = new Intl.Collator();

function renderOnline() {
  const users = new Map(); // one line per user, however many tabs
  for (const entry of online.values()) {
    if (!users.has(entry.user)) users.set(entry.user, entry.info ?? {});
  }
  const byName = [...users].sort(([, a], [, b]) => collator.compare(a.name ?? "", b.name ?? ""));
  const ul = $("online");
  ul.replaceChildren();
  for (const [user, info] of byName) {
    const li = document.createElement("li");
    li.dataset.user = user;
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = info.avatar ?? "?";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = info.name ?? `user ${user}`;
    li.append(avatar, " ", name);
    ul.append(li);
  }
  $("online-count").textContent = users.size;
}

async function loadPresence() {
  online.clear();
  // This tab, as the hub knows it (the info the connect hook gave).
  online.set(hub.client, { client: hub.client, user: hub.user, info: hub.info });
  try {
    for (const entry of await sub.presence()) online.set(entry.client, entry);
  } catch (error) {
    // Joins and leaves still come; the list of who was there before is
    // missing until the next reconnect.
    console.warn("chat: could not load who is online:", error.message);
  }
  renderOnline();
}

// -- the room --------------------------------------------------------------------------

function enter() {
  if (sub) return;
  $("join").hidden = true;
  $("text").disabled = $("send").disabled = false;
  sub = hub.subscribe(CHANNEL, {
    onPublication: (pub) => show(pub.data),
    async onSubscribe({ recovered }) {
      // First subscribe: the newest page. After a reconnect, the hub
      // recovered what was missed (onPublication had it), or could not: then
      // the database has it.
      document.body.dataset.recovered = String(recovered);
      try {
        if (recovered === null) await loadNewest();
        else if (recovered === false) await catchUp();
      } catch (error) {
        showError(`Could not load the messages: ${error.message}`);
        return;
      }
      await loadPresence();
      setState("live", "connected");
    },
    onRecoveryFailed() {}, // handled in onSubscribe
    onJoin(entry) {
      online.set(entry.client, entry);
      renderOnline();
    },
    onLeave(entry) {
      online.delete(entry.client);
      renderOnline();
    },
    onError(error) {
      // Refused by the subscribe hook (not a member), say.
      sub = null;
      showError(error.message);
      setState("refused", "refused");
    },
  });
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text) return;
  try {
    await hub.publish(CHANNEL, { text });
  } catch (error) {
    // Refused by the app (the word filter: 422), or the hub (503...).
    showError(error.message);
    return;
  }
  showError("");
  if (input.value.trim() === text) input.value = "";
});

hub.connect();

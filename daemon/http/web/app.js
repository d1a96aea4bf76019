// The Salon web client: rooms list, a room with its stage, audience and host controls.
// Every string from the server is inserted with textContent, never as HTML.

import { MediaEngine } from "./audio.js";
import { bytesToBase64, base64ToBytes } from "./srtp.js";
import { Connection, PROTOCOL_VERSION, ProtocolError } from "./wire.js";

const $ = (id) => document.getElementById(id);
const HOSTS = new Set(["owner", "moderator"]);
const STAGE = new Set(["owner", "moderator", "speaker"]);
const RANK = { owner: 3, moderator: 2, speaker: 1, listener: 0 };
const RETRY_MS = [500, 1000, 2000, 4000, 8000];
const REPORT_INTERVAL_MS = 1500; // receiver_report, PROTOCOL.md 11.9 (as the reference client)

function roomFromPath() {
  const match = location.pathname.match(/^\/r\/([^/]+)/);
  try {
    return match ? decodeURIComponent(match[1]) : "";
  } catch (_) {
    return ""; // a malformed link opens the rooms list
  }
}

const state = {
  connection: null,
  media: null,
  user: null,
  roomId: roomFromPath(),
  room: null, // RoomSnapshot while a member
  knocking: false,
  invited: false,
  speaking: new Set(),
  levels: new Map(),
  attempts: 0,
  connects: 0,
  unmuting: false,
  invite: new URLSearchParams(location.search).get("invite"),
};

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// `label` is what a screen reader announces (it names the person); `text` what is shown.
function button(label, onClick, secondary, text) {
  const node = el("button", text || label, secondary ? "secondary" : "");
  if (text) node.setAttribute("aria-label", label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function setStatus(text) { $("status").textContent = text; }
function note(text) { $("room-note").textContent = text; }

function guestKey() {
  let key = localStorage.getItem("salon.guest_key");
  if (!key || base64ToBytes(key).length < 16) {
    key = bytesToBase64(crypto.getRandomValues(new Uint8Array(32)));
    localStorage.setItem("salon.guest_key", key);
  }
  return key;
}

function displayName() {
  const fromLink = new URLSearchParams(location.search).get("name");
  if (fromLink) localStorage.setItem("salon.name", fromLink.slice(0, 64));
  return localStorage.getItem("salon.name") || "Guest";
}

async function call(type, fields) {
  try {
    return await state.connection.request(type, fields);
  } catch (error) {
    if (error instanceof ProtocolError && error.code !== "disconnected") note(`${type}: ${error.message}`);
    throw error;
  }
}

// ---------------------------------------------------------------- connection

async function connect() {
  setStatus("connecting…");
  const info = await (await fetch("/api/webtransport", { cache: "no-store" })).json();
  const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
  const connection = new Connection();
  connection.onEvent = onEvent;
  connection.onDatagram = (datagram) => state.media && state.media.receive(datagram);
  connection.onClose = (reason) => onDisconnected(connection, reason);
  await connection.open(
    `https://${host}:${Number(info.port)}${info.path}`,
    (info.certificate_hashes || []).map(base64ToBytes),
  );
  state.connection = connection;
  const hello = await connection.request("hello", {
    version: PROTOCOL_VERSION,
    display_name: displayName(),
    credentials: { guest_key: guestKey() },
    client: "salon-web/0.1",
    capabilities: ["red"], // audio.js decodes RED payloads (PROTOCOL.md 11.9)
  });
  connection.maxDatagram = Number(hello.limits && hello.limits.max_datagram_size) || 1100;
  state.user = hello.user;
  state.attempts = 0;
  state.connects++;
  setStatus(`connected as ${hello.display_name}`);
  if (!state.media) {
    state.media = new MediaEngine((datagram) => state.connection && state.connection.sendDatagram(datagram));
    state.media.onLevel = showLevel;
  }
  if (state.roomId) await joinRoom(state.roomId);
  else await showLobby();
}

function onDisconnected(connection, reason) {
  if (state.connection !== connection && state.connection !== null) return;
  state.connection = null;
  if (state.media) state.media.clear();
  state.knocking = false;
  state.room = null; // the new session gets the room anew (room_state) when it rejoins
  render();
  const delay = RETRY_MS[Math.min(state.attempts++, RETRY_MS.length - 1)];
  setStatus(`disconnected (${reason}); reconnecting…`);
  setTimeout(start, delay);
}

async function start() {
  try {
    await connect();
  } catch (error) {
    console.warn("connect failed", error);
    if (state.connection) state.connection.close();
    else onDisconnected(null, String(error && error.message || error));
  }
}

// ---------------------------------------------------------------- lobby

async function showLobby() {
  $("room").hidden = true;
  $("lobby").hidden = false;
  $("name").value = displayName();
  const { rooms } = await call("list_rooms", {});
  const list = $("rooms");
  list.replaceChildren();
  for (const room of rooms || []) {
    const item = el("li");
    const link = el("a", room.title || room.room, "who");
    link.href = `/r/${encodeURIComponent(room.room)}`;
    item.append(link, el("span", `${room.speakers} on stage · ${room.listeners} listening`, "badge"));
    if (room.policy === "approval") item.append(el("span", "host approves", "badge"));
    list.append(item);
  }
  $("no-rooms").hidden = (rooms || []).length > 0;
}

// ---------------------------------------------------------------- room

async function joinRoom(roomId) {
  $("lobby").hidden = true;
  $("room").hidden = false;
  $("room-title").textContent = roomId;
  await state.media.start().catch((error) => console.warn("audio", error));
  showListenButton();
  let result;
  try {
    result = await call("join", state.invite ? { room: roomId, invite: state.invite } : { room: roomId });
  } catch (error) {
    if (error.code === "already_in_room") return;
    note(`cannot join: ${error.message}`);
    return;
  }
  if (result.status === "knocking") {
    state.knocking = true;
    note("Waiting for the host to let you in…");
  }
}

function me() {
  return state.room && state.room.participants.find((p) => p.user === state.user);
}

function isHost() {
  const self = me();
  return Boolean(self && HOSTS.has(self.role));
}

function upsert(participant) {
  const list = state.room.participants;
  const at = list.findIndex((p) => p.user === participant.user);
  if (at >= 0) list[at] = participant;
  else list.push(participant);
}

async function onEvent(event) {
  const media = state.media;
  switch (event.type) {
    case "room_state":
      state.room = event.room;
      state.knocking = false;
      media.clear();
      for (const key of event.room.media_keys || []) await media.addKey(key, state.user);
      note("");
      break;
    case "participant_joined":
    case "participant_updated":
      if (!state.room) return;
      upsert(event.participant);
      break;
    case "participant_left":
      if (!state.room) return;
      state.room.participants = state.room.participants.filter((p) => p.user !== event.user);
      media.forgetUser(event.user);
      break;
    case "media_key":
      await media.addKey(event.key, state.user);
      break;
    case "media_key_revoked":
      // Our own flow stops at once; others' a little later, for datagrams still in flight.
      if (media.sending && media.sending.flowId === event.flow_id) media.sending = null;
      setTimeout(() => media.removeFlow(event.flow_id), 200);
      break;
    case "knock":
      if (state.room) state.room.knocks.push(event.request);
      break;
    case "knock_resolved":
      if (state.room) state.room.knocks = state.room.knocks.filter((k) => k.request_id !== event.request_id);
      break;
    case "knock_denied":
      state.knocking = false;
      note(`The host did not let you in (${event.reason}).`);
      break;
    case "speak_invitation":
      state.invited = true;
      note("You are invited to speak.");
      break;
    case "speaking":
      state.speaking = new Set((event.speakers || []).map((s) => s.user));
      break;
    case "muted":
      media.muted = true;
      note(event.reason ? `A host muted you: ${event.reason}` : "A host muted you.");
      break;
    case "removed":
      state.room = null;
      media.clear();
      note(`You were removed${event.reason ? ": " + event.reason : ""}.`);
      break;
    case "room_closed":
      state.room = null;
      media.clear();
      note("The room has closed.");
      break;
    case "room_updated":
      if (state.room && event.room) state.room.summary = event.room;
      break;
    case "server_shutdown":
      setStatus("the server is restarting…");
      break;
    default:
      return;
  }
  render();
}

function render() {
  // Lists are redrawn from the model: keep the keyboard focus on the same control.
  const focused = document.activeElement;
  const name = (node) => node.getAttribute("aria-label") || node.textContent;
  const focusedLabel = focused && focused.closest("ul") ? name(focused) : null;
  draw();
  if (focusedLabel !== null) {
    const again = [...document.querySelectorAll("ul button")].find((b) => name(b) === focusedLabel);
    if (again) again.focus();
  }
}

function draw() {
  const room = state.room;
  const self = me();
  $("room-title").textContent = room ? room.summary.title || room.summary.room : state.roomId;
  const onStage = Boolean(self && STAGE.has(self.role));
  $("mute").hidden = !onStage;
  $("mute").textContent = self && !self.muted ? "Mute" : "Unmute";
  $("mute").disabled = Boolean(self && self.muted_by_moderator);
  $("hand").hidden = !self || onStage;
  $("hand").textContent = self && self.hand_raised ? "Lower hand" : "Raise hand";
  $("accept").hidden = !state.invited || onStage;
  // Audio goes out only after the unmute request's ok (PROTOCOL.md 11.3), even though the
  // participant_updated showing us unmuted may arrive before it.
  if (state.media) state.media.muted = !self || self.muted || !onStage || state.unmuting;
  renderPeople(room);
  renderKnocks(room);
}

function renderPeople(room) {
  const stage = $("stage");
  const audience = $("audience");
  stage.replaceChildren();
  audience.replaceChildren();
  $("audience-title").textContent = "Listeners";
  if (!room) return;
  // A big room's room_state lists only some listeners (PROTOCOL.md 18): never take the list
  // for the whole audience; the count comes from the summary.
  const total = room.summary.listeners;
  const shown = room.participants.filter((p) => !STAGE.has(p.role)).length;
  $("audience-title").textContent = shown < total ? `Listeners (${shown} shown of ${total})` : `Listeners (${total})`;
  const host = isHost();
  const myRank = RANK[(me() || {}).role] || 0;
  for (const p of room.participants) {
    const item = el("li", undefined, state.speaking.has(p.user) ? "speaking" : "");
    item.dataset.user = p.user;
    item.append(el("span", p.display_name, "who"));
    item.append(el("span", p.role, "badge"));
    if (STAGE.has(p.role)) {
      if (p.muted) item.append(el("span", p.muted_by_moderator ? "muted by host" : "muted", "badge"));
      const meter = el("span", undefined, "level");
      meter.setAttribute("aria-hidden", "true");
      meter.append(el("span"));
      item.append(meter);
    }
    if (p.hand_raised) item.append(el("span", "✋ hand raised", "badge"));
    for (const [name, value] of Object.entries(p.verified || {})) item.append(el("span", `✓ ${name}: ${value}`, "badge"));
    // Hosts act on members below them (the owner on everyone): what the server permits.
    if (host && p.user !== state.user && (myRank === 3 || (RANK[p.role] || 0) < myRank)) {
      if (STAGE.has(p.role) && !p.muted_by_moderator) {
        item.append(button(`Mute ${p.display_name}`, () => call("mute", { user: p.user }).catch(() => {}), true, "Mute"));
      }
      if (!STAGE.has(p.role)) {
        item.append(button(`Invite ${p.display_name} to speak`, () => call("invite_to_speak", { user: p.user }).catch(() => {}), true, "Invite to speak"));
      }
      item.append(button(`Remove ${p.display_name}`, () => call("remove", { user: p.user }).catch(() => {}), true, "Remove"));
    }
    (STAGE.has(p.role) ? stage : audience).append(item);
  }
}

function renderKnocks(room) {
  const knocks = room && isHost() ? room.knocks : [];
  $("knocks-section").hidden = knocks.length === 0;
  const list = $("knocks");
  list.replaceChildren();
  for (const knock of knocks) {
    const item = el("li");
    item.dataset.request = knock.request_id;
    item.append(el("span", knock.display_name, "who"));
    const details = [`user ${knock.user}`];
    for (const [name, value] of Object.entries(knock.verified || {})) details.push(`✓ ${name}: ${value}`);
    for (const signal of knock.trust || []) details.push(signal);
    item.append(el("span", details.join(" · "), "detail"));
    item.append(button(`Approve ${knock.display_name}`, () => call("approve_knock", { request_id: knock.request_id }).catch(() => {}), false, "Approve"));
    item.append(button(`Deny ${knock.display_name}`, () => call("deny_knock", { request_id: knock.request_id }).catch(() => {}), true, "Deny"));
    list.append(item);
  }
}

function showLevel(user, level) {
  const who = user === null ? state.user : user;
  const item = document.querySelector(`#stage li[data-user="${CSS.escape(String(who))}"] .level > span`);
  if (item) item.style.width = `${Math.round(100 * Math.max(0, 1 - level / 70))}%`;
}

// Browsers start audio only after a user gesture when the page was opened from a link.
function showListenButton() {
  const context = state.media && state.media.context;
  $("listen").hidden = !context || context.state === "running";
}

// ---------------------------------------------------------------- controls

$("listen").addEventListener("click", async () => {
  await state.media.context.resume().catch(() => {});
  showListenButton();
});

$("mute").addEventListener("click", async () => {
  const self = me();
  if (!self) return;
  if (self.muted) {
    await state.media.startMicrophone().catch((error) => note(`microphone: ${error.message}`));
    state.unmuting = true;
    try {
      await call("unmute", {});
    } catch (_) {
      // shown by call()
    } finally {
      state.unmuting = false;
      render();
    }
  } else {
    state.media.muted = true; // stop sending before asking
    await call("mute", {}).catch(() => {});
  }
});
$("hand").addEventListener("click", () => {
  const self = me();
  call(self && self.hand_raised ? "lower_hand" : "raise_hand", {}).catch(() => {});
});
$("accept").addEventListener("click", async () => {
  state.invited = false;
  await call("accept_speak", {}).catch(() => {});
  render();
});
$("leave").addEventListener("click", async () => {
  if (state.connection) await call(state.knocking ? "cancel_knock" : "leave", {}).catch(() => {});
  state.room = null;
  state.media && state.media.clear();
  location.href = "/";
});
$("name").addEventListener("change", () => {
  localStorage.setItem("salon.name", $("name").value.trim().slice(0, 64) || "Guest");
});

// Hooks for the automated browser tests (tests/test_web_client.py): read-only views of the
// page's state and its decoded audio; nothing here changes what the page does.
window.salonTest = {
  state,
  call,
  recordStart() { state.media.record(true); },
  recordTake() {
    const samples = state.media.takeRecording();
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
    return bytesToBase64(new Uint8Array(pcm.buffer));
  },
};

// Loss of what this page hears reaches the speakers, who size their redundancy for it.
function sendReceiverReport() {
  if (!state.connection || !state.room || !state.media) return;
  const reports = state.media.takeReports();
  if (!reports.length) return;
  // Best effort: a refused or lost report costs nothing but that report.
  state.connection.request("receiver_report", { reports }).catch(() => {});
}

setInterval(sendReceiverReport, REPORT_INTERVAL_MS);
start();

// Plays the HLS playlist named in the page's fragment: natively where the browser can,
// otherwise with hls.js (vendored from npm, version 1.7.4, Apache-2.0: hls.js-LICENSE).
"use strict";

const player = document.getElementById("player");
const state = document.getElementById("state");
const playlist = decodeURIComponent(location.hash.slice(1));

function show(text) {
  state.textContent = text;
  document.title = "Salon stream: " + text;
}

player.addEventListener("timeupdate", () => show("playing " + player.currentTime.toFixed(2)));
player.addEventListener("error", () => show("error " + (player.error ? player.error.code : "")));

function start() {
  // Browsers start sound only after a gesture: the Play button.
  player.play().catch((e) => show("error " + e));
}

document.getElementById("play").addEventListener("click", start);

if (!/^https?:\/\//.test(playlist)) {
  show("no playlist URL in the fragment");
} else if (window.Hls && Hls.isSupported()) {
  // Low latency: start one segment from the live edge; no worker (the page's CSP has none).
  const hls = new Hls({ enableWorker: false, liveSyncDurationCount: 2, lowLatencyMode: false });
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (data.fatal) show("error " + data.type + " " + data.details);
  });
  hls.loadSource(playlist);
  hls.attachMedia(player);
  hls.on(Hls.Events.MANIFEST_PARSED, () => show("ready: press Play"));
} else if (player.canPlayType("application/vnd.apple.mpegurl")) {
  player.src = playlist;
  show("ready: press Play");
} else {
  show("error: this browser plays no HLS");
}

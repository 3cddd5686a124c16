// The Talk page: microphone -> AudioWorklet (16 kHz mono 16-bit PCM, 1024-byte frames)
// -> WebSocket (authenticated by the session cookie) -> partials, finals and spoken replies.
"use strict";

(() => {
  const root = document.getElementById("talk");
  if (!root) return;
  const byId = (id) => document.getElementById(id);
  const ui = {
    language: byId("language"),
    start: byId("start"),
    stop: byId("stop"),
    meter: root.querySelector(".meter"),
    meterFill: byId("meter-fill"),
    statusText: byId("status-text"),
    problem: byId("problem"),
    problemText: byId("problem-text"),
    restart: byId("restart"),
    partial: byId("partial"),
    finals: byId("finals"),
    finalsEmpty: byId("finals-empty"),
    replies: byId("replies"),
    repliesEmpty: byId("replies-empty"),
  };
  const SAMPLE_RATE = Number(root.dataset.sampleRate);
  const FRAME_BYTES = Number(root.dataset.frameBytes);
  const MAX_PENDING_FRAMES = 250; // ~8 s of audio captured before the socket opens
  const CLOSE_TEXT = JSON.parse(byId("close-texts").textContent); // protocol.CLOSE_MEANINGS
  const RETRY_MAX_SECONDS = 30; // an unreachable server is tried again after 1, 2, 4… s

  let state = "idle"; // idle | starting | live | finishing
  let socket = null;
  let mic = null;
  let pending = [];
  let stopRequested = false;
  let serverError = "";
  let level = 0;
  let attempts = 0; // start() calls; a stale one backs out after its await
  let retries = 0; // failed connections in a row (the server could not be reached)
  let retryTimer = null;

  // ---- state and messages -------------------------------------------------------

  function setState(next, text) {
    state = next;
    root.dataset.state = next;
    ui.start.hidden = next !== "idle";
    ui.stop.hidden = next === "idle";
    ui.stop.disabled = next === "finishing";
    const label = { starting: "Cancel", live: "Stop", finishing: "Finishing…" }[next];
    if (label) ui.stop.querySelector("span").textContent = label;
    ui.language.disabled = next !== "idle";
    if (text) ui.statusText.textContent = text;
  }

  function showDone() {
    // The session that just ended is this user's newest browser session: History's
    // "latest" link opens it (the socket never tells the page its session id).
    const link = document.createElement("a");
    link.href = root.dataset.historyLatest;
    link.dataset.testid = "history-link";
    link.textContent = "saved to your history";
    ui.statusText.replaceChildren("Done — ", link, ". Press Start talking to go on.");
  }

  function showProblem(text, kind = "error", action = "Start again") {
    ui.problemText.textContent = text;
    ui.restart.textContent = action;
    ui.problem.className = `alert alert-${kind} alert-action`;
    ui.problem.hidden = false;
  }

  function hideProblem() {
    ui.problem.hidden = true;
  }

  function refreshEmpty() {
    ui.finalsEmpty.hidden = ui.finals.children.length > 0 || ui.partial.textContent !== "";
    ui.repliesEmpty.hidden = ui.replies.children.length > 0;
  }

  function clock() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // ---- microphone ---------------------------------------------------------------

  function micProblem(error) {
    if (!window.isSecureContext) {
      return "The microphone needs a secure page: open this site over https:// or on localhost.";
    }
    switch (error && error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access is blocked. Allow it for this site in the browser's settings, then start again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Plug one in, then start again.";
      case "NotReadableError":
        return "The microphone is in use by another application or could not be opened.";
      default:
        return `The microphone could not start: ${error && error.message ? error.message : error}`;
    }
  }

  async function openMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error("getUserMedia is unavailable"), { name: "SecurityError" });
    }
    // Made before the first await, inside the click: Safari only lets a context that
    // a user gesture created (or resumed) make sound.
    const context = new AudioContext({ latencyHint: "interactive" });
    let stream = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      await context.audioWorklet.addModule(root.dataset.worklet);
      const source = context.createMediaStreamSource(stream);
      const encoder = new AudioWorkletNode(context, "pcm16-encoder", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: "explicit", // the browser mixes any input down to mono
        processorOptions: { targetRate: SAMPLE_RATE, frameBytes: FRAME_BYTES },
      });
      encoder.port.onmessage = (event) => onFrame(event.data);
      source.connect(encoder);
      encoder.connect(context.destination); // it outputs silence; this keeps it pulled
      if (context.state === "suspended") await context.resume();
      for (const track of stream.getAudioTracks()) {
        track.addEventListener("ended", onMicrophoneLost);
      }
      return { stream, context, encoder };
    } catch (error) {
      if (stream) stream.getTracks().forEach((track) => track.stop());
      context.close();
      throw error;
    }
  }

  function onMicrophoneLost() {
    if (state !== "live") return;
    stop();
    showProblem("The microphone went away (unplugged or taken by another app). What you said is being saved.", "info");
  }

  function closeMicrophone() {
    if (!mic) return;
    closeMicrophoneOf(mic);
    mic = null;
    level = 0;
    drawMeter();
  }

  function closeMicrophoneOf({ stream, context, encoder }) {
    encoder.port.onmessage = null;
    encoder.port.postMessage("stop");
    stream.getTracks().forEach((track) => track.stop());
    context.close().catch(() => {});
  }

  function onFrame({ pcm, peak }) {
    level = Math.max(peak, level * 0.8);
    if (state === "live" && socket && socket.readyState === WebSocket.OPEN) {
      socket.send(pcm);
    } else if (state === "starting") {
      pending.push(pcm);
      if (pending.length > MAX_PENDING_FRAMES) pending.shift();
    }
  }

  function drawMeter() {
    // Peak in dBFS, -60..0 dB mapped onto the bar.
    const db = level > 0 ? 20 * Math.log10(level) : -100;
    const fraction = Math.min(1, Math.max(0, (db + 60) / 60));
    ui.meterFill.style.transform = `scaleX(${fraction.toFixed(3)})`;
    ui.meter.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    ui.meter.classList.toggle("hearing", fraction > 0.25);
    if (mic) requestAnimationFrame(drawMeter);
  }

  // ---- socket -------------------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({
      language: ui.language.value,
      encoding: "pcm",
      sampleRate: String(SAMPLE_RATE),
      sendPartials: "true",
    });
    return `${scheme}//${location.host}${root.dataset.wsPath}?${query}`;
  }

  function openSocket() {
    retryTimer = null;
    const ws = new WebSocket(socketUrl());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (ws !== socket) return;
      ws.opened = true;
      retries = 0;
      hideProblem();
      setState("live", "Listening — speak now. Press Stop when you are done.");
      for (const frame of pending) ws.send(frame);
      pending = [];
    };
    ws.onmessage = (event) => {
      if (ws === socket && typeof event.data === "string") onMessage(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      if (ws === socket) onClose(event);
    };
    socket = ws;
  }

  function onMessage(message) {
    if ("error" in message) {
      serverError = message.error; // the close that follows reports it
    } else if (message.type === "server_response") {
      addReply(message);
    } else if ("partialTranscript" in message) {
      ui.partial.textContent = message.partialTranscript;
      refreshEmpty();
    } else if ("transcript" in message) {
      addFinal(message.transcript);
    }
  }

  // The socket never opened (a refused connection gives 1006 at once): the server is
  // down or restarting. Keep the microphone and try again, waiting longer each time.
  function retryLater() {
    socket = null;
    pending = [];
    const delay = Math.min(RETRY_MAX_SECONDS, 2 ** retries);
    retries += 1;
    let left = delay;
    const tell = () => {
      setState("starting", `Cannot reach the server — trying again in ${left} s…`);
      showProblem(
        `The server at ${location.host} cannot be reached: is it running? ` +
          `Trying again in ${left} s (attempt ${retries + 1}); press Cancel to give up.`,
        "info",
        "Try now",
      );
    };
    tell();
    const tick = () => {
      left -= 1;
      if (left > 0) {
        tell();
        retryTimer = setTimeout(tick, 1000);
      } else {
        setState("starting", "Connecting…");
        openSocket();
      }
    };
    retryTimer = setTimeout(tick, 1000);
  }

  function onClose(event) {
    if (!event.target.opened && !stopRequested && event.code === 1006 && !serverError) {
      retryLater();
      return;
    }
    retries = 0;
    const stopped = stopRequested;
    const cancelled = stopped && state === "starting";
    socket = null;
    pending = [];
    closeMicrophone();
    ui.partial.textContent = "";
    refreshEmpty();
    if (cancelled) {
      setState("idle", "Cancelled.");
    } else if (serverError) {
      setState("idle", "Stopped.");
      showProblem(`${serverError} (code ${event.code})`);
    } else if (event.code === 1000 && stopped) {
      setState("idle");
      showDone();
    } else if (event.code === 1000) {
      setState("idle", "The session ended.");
      showProblem(`The server ended the session: ${event.reason || "no reason given"}.`, "info");
    } else {
      const what = CLOSE_TEXT[event.code] || "The connection closed unexpectedly.";
      setState("idle", "Disconnected.");
      showProblem(`${what} (code ${event.code}) What you said so far is saved.`);
    }
    serverError = "";
  }

  // ---- transcript and replies ---------------------------------------------------

  function addFinal(text) {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = clock();
    const words = document.createElement("span");
    words.textContent = text;
    item.append(time, words);
    ui.finals.append(item);
    ui.partial.textContent = "";
    refreshEmpty();
    item.scrollIntoView({ block: "nearest" });
  }

  function audioBlob(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: "audio/mpeg" });
  }

  const playQueue = [];
  let playing = null;

  function playNext() {
    playing = playQueue.shift() || null;
    if (!playing) return;
    const player = playing;
    let done = false;
    const next = () => {
      if (done) return;
      done = true;
      if (player.closest(".reply")) player.closest(".reply").classList.remove("speaking");
      playNext();
    };
    player.addEventListener("ended", next, { once: true });
    player.addEventListener("error", next, { once: true });
    player.closest(".reply").classList.add("speaking");
    player.play().catch(() => {
      // The browser refused to play without a fresh tap: the controls stay for the user.
      player.closest(".reply").classList.add("blocked");
      next();
    });
  }

  function addReply(message) {
    const item = document.createElement("article");
    item.className = "reply";
    const head = document.createElement("header");
    head.textContent = `Reply · ${clock()}`;
    const text = document.createElement("p");
    text.textContent = message.message || "";
    item.append(head, text);
    if (message.audio) {
      const player = document.createElement("audio");
      player.controls = true;
      player.preload = "auto";
      player.src = URL.createObjectURL(audioBlob(message.audio));
      item.append(player);
      playQueue.push(player);
    }
    ui.replies.append(item);
    refreshEmpty();
    item.scrollIntoView({ block: "nearest" });
    if (!playing) playNext();
  }

  // ---- controls -----------------------------------------------------------------

  async function start() {
    if (state !== "idle") return;
    hideProblem();
    stopRequested = false;
    serverError = "";
    setState("starting", "Asking for the microphone…");
    const attempt = ++attempts;
    let opened;
    try {
      opened = await openMicrophone();
    } catch (error) {
      if (attempt !== attempts || stopRequested) return; // cancelled meanwhile
      setState("idle", "Not started.");
      showProblem(micProblem(error));
      return;
    }
    if (attempt !== attempts || stopRequested) {
      closeMicrophoneOf(opened); // cancelled while the browser asked for the microphone
      return;
    }
    mic = opened;
    if (ui.finals.children.length) {
      const divider = document.createElement("li");
      divider.className = "divider";
      divider.setAttribute("role", "separator");
      divider.textContent = `New session · ${clock()}`;
      ui.finals.append(divider);
    }
    requestAnimationFrame(drawMeter);
    setState("starting", "Connecting…");
    openSocket();
  }

  function stop() {
    if (state === "live" && socket) {
      stopRequested = true;
      socket.send("END_OF_STREAM");
      closeMicrophone();
      setState("finishing", "Finishing — waiting for the last words and the answer…");
    } else if (state === "starting") {
      stopRequested = true;
      if (retryTimer) {
        clearTimeout(retryTimer); // waiting to try the server again: give up
        retryTimer = null;
        retries = 0;
        closeMicrophone();
        hideProblem();
        setState("idle", "Cancelled.");
      } else if (socket) {
        socket.close(1000);
      } else {
        setState("idle", "Cancelled.");
      }
    }
  }

  if (window.Intl && Intl.DisplayNames) {
    const names = new Intl.DisplayNames([navigator.language || "en"], { type: "language" });
    for (const option of ui.language.options) {
      try {
        const name = names.of(option.value);
        if (name && name !== option.value) option.textContent = `${name} · ${option.value}`;
      } catch {
        // A code the browser cannot name keeps its code.
      }
    }
  }
  const saved = localStorage.getItem("talk.language");
  if (saved && [...ui.language.options].some((option) => option.value === saved)) {
    ui.language.value = saved;
  }
  ui.language.addEventListener("change", () => localStorage.setItem("talk.language", ui.language.value));
  ui.start.addEventListener("click", start);
  ui.restart.addEventListener("click", () => {
    if (!retryTimer) return start();
    clearTimeout(retryTimer); // "Try now" while waiting to try the server again
    setState("starting", "Connecting…");
    openSocket();
  });
  ui.stop.addEventListener("click", stop);
  window.addEventListener("pagehide", () => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send("END_OF_STREAM");
  });
  refreshEmpty();
})();

// The Talk page: microphone -> AudioWorklet (16 kHz mono 16-bit PCM, 1024-byte frames)
// -> WebSocket (authenticated by the session cookie) -> partials, finals and spoken replies.
//
// Sessions use the conversation extensions (docs/protocol.md §11, §12): replies streamed
// by sentence (talk-replies.js plays them), barge-in (optional: a checkbox), and resume:
// a socket that drops without a close (1006) or whose server goes away (1001) is opened
// again with ?resume=<id>&after=<last seq>, the microphone still recording; the audio the
// server had not received is sent again. docs/protocol.md §14 describes it.
"use strict";

(() => {
  const root = document.getElementById("talk");
  if (!root) return;
  const byId = (id) => document.getElementById(id);
  const ui = {
    language: byId("language"),
    bargeIn: byId("barge-in"),
    start: byId("start"),
    stop: byId("stop"),
    meter: root.querySelector(".meter"),
    meterFill: byId("meter-fill"),
    statusText: byId("status-text"),
    problem: byId("problem"),
    problemText: byId("problem-text"),
    restart: byId("restart"),
    partial: byId("partial"),
    detected: byId("detected-language"),
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
  const RECONNECT_FIRST_SECONDS = 0.5; // a resume is tried after 0.5, 1, 2, 4, 5, 5… s
  const RECONNECT_MAX_SECONDS = 5;
  const KEEP_MARGIN_SECONDS = 10; // audio kept for a resume: resumeWithin plus this
  const BYTES_PER_SECOND = SAMPLE_RATE * 2;

  let state = "idle"; // idle | starting | live | reconnecting | finishing
  let socket = null;
  let mic = null;
  let pending = [];
  let stopRequested = false;
  let serverError = "";
  let level = 0;
  let attempts = 0; // start() calls; a stale one backs out after its await
  let retries = 0; // failed connections in a row (the server could not be reached)
  let retryTimer = null;
  // Resume (docs/protocol.md §12).
  let sessionId = null; // from {"type": "session"}: this session can be resumed
  let resumeWithin = 0; // seconds
  let lastSeq = 0; // the last numbered message shown (finals and replies)
  let lostAt = 0; // when the socket dropped (ms), while reconnecting
  let reconnects = 0; // resume attempts since it dropped
  let reconnectTimer = null;
  let kept = []; // [{at, pcm}]: the session's recent audio, `at` its byte offset
  let audioEnd = 0; // bytes of the session's audio captured so far
  const replies = window.TalkReplies(byId("replies"), {
    clock,
    onChange: () => {
      root.dataset.speaking = String(replies.speaking());
      refreshEmpty();
    },
  });

  // ---- state and messages -------------------------------------------------------

  function setState(next, text) {
    state = next;
    root.dataset.state = next;
    ui.start.hidden = next !== "idle";
    ui.stop.hidden = next === "idle";
    ui.stop.disabled = next === "finishing";
    const label = { starting: "Cancel", live: "Stop", reconnecting: "Stop", finishing: "Finishing…" }[next];
    if (label) ui.stop.querySelector("span").textContent = label;
    ui.language.disabled = next !== "idle";
    ui.bargeIn.disabled = next !== "idle";
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
      sendAudio(pcm);
    } else if (state === "live" || state === "reconnecting") {
      keep(pcm); // the socket is dropping: sent again once the session is resumed
    } else if (state === "starting") {
      pending.push(pcm);
      if (pending.length > MAX_PENDING_FRAMES) pending.shift();
    }
  }

  // Every frame sent is kept for a while: a resume may need it again (what was in
  // flight when the socket dropped never reached the server).
  function keep(pcm) {
    kept.push({ at: audioEnd, pcm });
    audioEnd += pcm.byteLength;
    const keepBytes = ((resumeWithin || 30) + KEEP_MARGIN_SECONDS) * BYTES_PER_SECOND;
    while (kept.length && kept[0].at + kept[0].pcm.byteLength < audioEnd - keepBytes) kept.shift();
    root.dataset.audioBytes = String(audioEnd);
  }

  function sendAudio(pcm) {
    keep(pcm);
    socket.send(pcm);
  }

  // The resume answer says up to which second the server holds the session's audio:
  // send what was captured after it (a frame cut where that second falls).
  function sendAgainFrom(seconds) {
    const from = Math.min(audioEnd, Math.round(seconds * SAMPLE_RATE) * 2);
    let again = 0;
    for (const { at, pcm } of kept) {
      if (at + pcm.byteLength <= from) continue;
      const part = at < from ? pcm.slice(from - at) : pcm;
      socket.send(part);
      again += part.byteLength;
    }
    const lost = kept.length && kept[0].at > from ? kept[0].at - from : 0;
    root.dataset.audioSentAgain = String(again);
    root.dataset.audioLost = String(lost); // older than what is kept: not sent again
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

  function socketUrl(resuming) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // A resume names the session only: it keeps its own parameters.
    const query = resuming
      ? new URLSearchParams({ resume: sessionId, after: String(lastSeq) })
      : new URLSearchParams({
          language: ui.language.value,
          encoding: "pcm",
          sampleRate: String(SAMPLE_RATE),
          sendPartials: "true",
          replyStream: "true",
          bargeIn: String(ui.bargeIn.checked),
          resumable: "true",
        });
    return `${scheme}//${location.host}${root.dataset.wsPath}?${query}`;
  }

  function openSocket(resuming = false) {
    retryTimer = null;
    reconnectTimer = null;
    const ws = new WebSocket(socketUrl(resuming));
    ws.binaryType = "arraybuffer";
    ws.resuming = resuming;
    ws.onopen = () => {
      if (ws !== socket) return;
      ws.opened = true;
      if (resuming) return; // audio waits for the "resumed" answer
      retries = 0;
      hideProblem();
      setState("live", "Listening — speak now. Press Stop when you are done.");
      for (const frame of pending) sendAudio(frame);
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
    if (sessionId && typeof message.seq === "number") {
      if (message.seq <= lastSeq) return; // shown already (replayed by a resume)
      lastSeq = message.seq;
    }
    if ("error" in message) {
      serverError = message.error; // the close that follows reports it
    } else if (message.type === "session") {
      sessionId = message.id;
      resumeWithin = message.resumeWithin;
      root.dataset.sessionId = message.id;
    } else if (message.type === "resumed") {
      onResumed(message);
    } else if (message.type === "server_response") {
      replies.add(message);
    } else if (message.type === "reply_cancelled") {
      replies.cancelled(message.batch_id);
    } else if (message.type === "language") {
      showLanguage(message.language, message.probability);
    } else if ("partialTranscript" in message) {
      if (message.partialTranscript.trim()) speaksAgain();
      ui.partial.textContent = message.partialTranscript;
      refreshEmpty();
    } else if ("transcript" in message) {
      if (message.transcript.trim()) speaksAgain();
      addFinal(message.transcript, message.seq);
    }
  }

  // language=auto: the server names the language it identified, once per session.
  function showLanguage(code, probability) {
    let name = code;
    try {
      name = `${new Intl.DisplayNames([navigator.language || "en"], { type: "language" }).of(code)} · ${code}`;
    } catch {
      // A browser without the names shows the code.
    }
    ui.detected.textContent = `Language detected: ${name} (${Math.round(probability * 100)} % sure)`;
    ui.detected.dataset.language = code;
    ui.detected.hidden = false;
  }

  // Barge-in: the person speaks while a reply plays. The server cancels a reply still
  // on its way (reply_cancelled); playback stops here at once, for one sent whole too.
  function speaksAgain() {
    if (ui.bargeIn.checked && state !== "finishing") replies.interrupt();
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

  // ---- resume (docs/protocol.md §12) ---------------------------------------------

  function canResume(event) {
    if (!sessionId || (stopRequested && state === "starting")) return false;
    if (event.target.resuming) {
      // A resume attempt: the server unreachable (1006), busy handing the session
      // over (1013) or stopping (1001): try again. A refusal (1008) is final.
      return [1001, 1006, 1013].includes(event.code);
    }
    return event.code === 1006 || event.code === 1001;
  }

  function reconnectLater() {
    socket = null;
    serverError = "";
    if (!lostAt) lostAt = Date.now();
    const waited = (Date.now() - lostAt) / 1000;
    if (waited >= resumeWithin) {
      giveUp(
        `The connection to the server was lost for more than ${resumeWithin} s: the session ` +
          "could not be resumed. What the server received is saved.",
      );
      return;
    }
    const delay = Math.min(RECONNECT_MAX_SECONDS, RECONNECT_FIRST_SECONDS * 2 ** reconnects);
    reconnects += 1;
    setState("reconnecting", `Reconnecting… (attempt ${reconnects})`);
    showProblem(
      "The connection to the server was lost. Reconnecting… The microphone keeps " +
        "recording: what you say meanwhile is sent once the session is back.",
      "info",
      "Try now",
    );
    reconnectTimer = setTimeout(() => openSocket(true), delay * 1000);
  }

  function onResumed(message) {
    socket.resuming = false; // resumed: from now on a socket like the first
    lostAt = 0;
    reconnects = 0;
    hideProblem();
    sendAgainFrom(message.audioSeconds);
    if (stopRequested) {
      socket.send("END_OF_STREAM"); // it may not have arrived before the drop
      setState("finishing", "Reconnected — waiting for the last words and the answer…");
    } else {
      setState("live", "Reconnected — the session goes on. Speak now; press Stop when you are done.");
    }
  }

  function giveUp(text, kind = "error") {
    socket = null;
    lostAt = 0;
    reconnects = 0;
    sessionId = null;
    closeMicrophone();
    ui.partial.textContent = "";
    refreshEmpty();
    setState("idle", "Disconnected.");
    showProblem(text, kind);
  }

  function onClose(event) {
    if (!event.target.opened && !stopRequested && event.code === 1006 && !serverError && !sessionId) {
      retryLater();
      return;
    }
    if (canResume(event)) {
      reconnectLater();
      return;
    }
    retries = 0;
    lostAt = 0;
    reconnects = 0;
    sessionId = null;
    const stopped = stopRequested;
    const cancelled = stopped && state === "starting";
    socket = null;
    pending = [];
    closeMicrophone();
    ui.partial.textContent = "";
    refreshEmpty();
    if (cancelled) {
      setState("idle", "Cancelled.");
    } else if (serverError && event.target.resuming) {
      setState("idle", "Could not reconnect.");
      showProblem(`${serverError} (code ${event.code})`); // the server says why
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

  function addFinal(text, seq) {
    const item = document.createElement("li");
    if (seq !== undefined) item.dataset.seq = String(seq);
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
    sessionId = null;
    lastSeq = 0;
    kept = [];
    audioEnd = 0;
    delete root.dataset.sessionId;
    ui.detected.hidden = true; // a new session identifies its language again
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
    if (state === "reconnecting") {
      // Give up on the dropped session: the server ends it once RESUME_SECONDS pass.
      clearTimeout(reconnectTimer);
      const attempt = socket;
      if (attempt) {
        attempt.onclose = null;
        attempt.close(1000);
      }
      giveUp("Stopped while reconnecting. What the server received is saved.", "info");
    } else if (state === "live" && socket) {
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
      if ("fixedLabel" in option.dataset) continue;
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
  ui.bargeIn.checked = localStorage.getItem("talk.bargeIn") !== "false";
  ui.bargeIn.addEventListener("change", () => localStorage.setItem("talk.bargeIn", String(ui.bargeIn.checked)));
  ui.start.addEventListener("click", start);
  ui.restart.addEventListener("click", () => {
    if (reconnectTimer) {
      clearTimeout(reconnectTimer); // "Try now" while reconnecting
      return openSocket(true);
    }
    if (state === "reconnecting") return undefined; // an attempt is on its way
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

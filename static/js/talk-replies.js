// The Talk page's replies: one card per batch, which grows piece by piece when the reply
// is streamed by sentence (replyStream, docs/protocol.md §11). Pieces are played in the
// order they arrive, the first while later ones are still on their way, and stopped at
// once (the queue dropped) when the person speaks again or the server cancels the reply
// (bargeIn: reply_cancelled).
//
// For tests and styles, a card says what it holds: data-state streaming | done |
// interrupted, data-pieces (pieces with audio), data-played (pieces heard to the end),
// data-cancelled once the server cancelled it; each piece is an <audio class="piece">
// with data-state queued | playing | played | stopped | dropped | blocked | failed.
"use strict";

window.TalkReplies = (list, { clock, onChange }) => {
  let queue = []; // pieces waiting to play, in arrival order
  let current = null; // the piece playing

  function cardOf(batchId) {
    return [...list.children].find((card) => card.dataset.batchId === batchId) || null;
  }

  function newCard(batchId) {
    const card = document.createElement("article");
    card.className = "reply";
    card.dataset.batchId = batchId || "";
    card.dataset.state = "streaming";
    card.dataset.pieces = "0";
    card.dataset.played = "0";
    const head = document.createElement("header");
    const when = document.createElement("span");
    when.textContent = `Reply · ${clock()}`;
    const badge = document.createElement("span");
    badge.className = "reply-state";
    badge.dataset.testid = "reply-state";
    head.append(when, badge);
    const text = document.createElement("p");
    const again = document.createElement("button");
    again.type = "button";
    again.className = "btn btn-sm reply-play";
    again.dataset.testid = "reply-play";
    again.textContent = "Play again";
    again.hidden = true;
    again.addEventListener("click", () => replay(card));
    card.append(head, text, again);
    list.append(card);
    card.scrollIntoView({ block: "nearest" });
    return card;
  }

  function setCardState(card, state, label) {
    card.dataset.state = state;
    card.querySelector(".reply-state").textContent = label;
  }

  function piecesOf(card) {
    return [...card.querySelectorAll("audio.piece")];
  }

  function audioUrl(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return URL.createObjectURL(new Blob([bytes], { type: "audio/mpeg" }));
  }

  // A server_response: a whole reply (no `last`), or one piece of a streamed one.
  function add(message) {
    const streamed = "last" in message;
    const index = streamed ? ("piece" in message ? message.piece : message.seq) : 0;
    let card = cardOf(message.batch_id);
    if (card && (!streamed || card.querySelector(`[data-piece="${index}"]`))) {
      return; // replies are at least once (docs/protocol.md §12): shown already
    }
    card = card || newCard(message.batch_id);
    const text = card.querySelector("p");
    if (message.message) {
      text.textContent = text.textContent ? `${text.textContent} ${message.message}` : message.message;
    }
    if (message.audio) {
      const audio = document.createElement("audio");
      audio.className = "piece";
      audio.dataset.piece = String(index);
      audio.preload = "auto";
      audio.src = audioUrl(message.audio);
      card.insertBefore(audio, card.querySelector(".reply-play"));
      card.dataset.pieces = String(piecesOf(card).length);
      card.querySelector(".reply-play").hidden = false;
      if (card.dataset.state === "interrupted") {
        audio.dataset.state = "dropped"; // already on its way when the person spoke
      } else {
        audio.dataset.state = "queued";
        queue.push(audio);
      }
    }
    if (card.dataset.state === "streaming" && (!streamed || message.last)) {
      setCardState(card, "done", "");
    }
    card.scrollIntoView({ block: "nearest" });
    if (!current) playNext();
    onChange();
  }

  function playNext() {
    current = queue.shift() || null;
    onChange();
    if (!current) return;
    const audio = current;
    const card = audio.closest(".reply");
    const finish = (state) => {
      if (audio !== current) return; // stopped meanwhile
      audio.dataset.state = state;
      card.classList.remove("speaking");
      if (state === "played") {
        card.dataset.played = String(Number(card.dataset.played) + 1);
      }
      playNext();
    };
    audio.dataset.state = "playing";
    card.classList.add("speaking");
    audio.onended = () => finish("played");
    audio.onerror = () => finish("failed");
    audio.currentTime = 0;
    audio.play().catch(() => {
      if (audio !== current) return; // paused by a barge-in before it started
      // The browser refused to play without a fresh tap: the card's button plays it.
      card.classList.add("blocked");
      card.querySelector(".reply-play").textContent = "Play";
      finish("blocked");
    });
  }

  // Stop the playing piece and drop the queued ones that `match`; what is left plays.
  function silence(match) {
    if (current && match(current)) {
      current.pause();
      current.dataset.state = "stopped";
      current.closest(".reply").classList.remove("speaking");
      current = null;
    }
    for (const audio of queue.filter(match)) audio.dataset.state = "dropped";
    queue = queue.filter((audio) => !match(audio));
    if (!current) playNext();
    onChange();
  }

  function interruptCard(card) {
    if (card.dataset.state !== "interrupted") setCardState(card, "interrupted", "Interrupted");
  }

  // reply_cancelled: the server stopped this reply because the person spoke again.
  function cancelled(batchId) {
    const card = cardOf(batchId) || newCard(batchId);
    card.dataset.cancelled = "true";
    interruptCard(card);
    silence((audio) => audio.closest(".reply") === card);
  }

  // The person speaks again (a partial or final while a reply plays): stop at once,
  // before the server's reply_cancelled comes (or when the whole reply had been sent).
  function interrupt() {
    const held = current ? [current, ...queue] : queue;
    if (!held.length) return;
    for (const card of new Set(held.map((audio) => audio.closest(".reply")))) interruptCard(card);
    silence(() => true);
  }

  function replay(card) {
    silence(() => true);
    card.classList.remove("blocked");
    card.querySelector(".reply-play").textContent = "Play again";
    for (const audio of piecesOf(card)) {
      audio.dataset.state = "queued";
      queue.push(audio);
    }
    playNext();
  }

  return {
    add,
    cancelled,
    interrupt,
    speaking: () => current !== null,
  };
};

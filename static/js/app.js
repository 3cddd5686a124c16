// Small helpers for every page: copy buttons and times shown in the reader's time zone.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  const text = source.value !== undefined ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text.trim());
  } catch {
    // Pages served over plain http to another host have no Clipboard API.
    const range = document.createRange();
    range.selectNodeContents(source);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  button.classList.add("copied");
  setTimeout(() => {
    button.textContent = label;
    button.classList.remove("copied");
  }, 1600);
});

for (const time of document.querySelectorAll("time[data-local]")) {
  const when = new Date(time.getAttribute("datetime"));
  if (Number.isNaN(when.getTime())) continue;
  const options =
    time.dataset.local === "date"
      ? { dateStyle: "medium" }
      : { dateStyle: "medium", timeStyle: "short" };
  time.textContent = when.toLocaleString([], options);
  time.title = when.toISOString();
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// A page that shows something once (a new token) came from a POST: make its history
// entry a plain GET, so that reloading shows the list instead of creating another.
if (document.querySelector("[data-once]")) history.replaceState(null, "", location.href);

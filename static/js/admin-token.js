// The admin's page that shows a new raw token once: focusing it selects it for copying
// (a static file rather than an onfocus attribute: the CSP allows no inline code).
document.getElementById("raw-token")?.addEventListener("focus", (event) => {
  event.target.select();
});

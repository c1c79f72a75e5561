// The drawing pad of barenet's draw-a-digit pages (`barenet serve` and the static page of
// `barenet export --web`): white strokes 20 pixels wide on black, by mouse, pen or finger.
// drawingPad(canvas, onStroke) returns {reset, context}; onStroke() runs after each stroke.
"use strict";

function drawingPad(canvas, onStroke) {
  const ctx = canvas.getContext("2d");
  let drawing = false, last = null;
  const reset = () => {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round";
  };
  const point = e => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", e => {
    drawing = true; last = point(e); canvas.setPointerCapture(e.pointerId);
    ctx.beginPath(); ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fillStyle = "#fff"; ctx.fill();
  });
  canvas.addEventListener("pointermove", e => {
    if (!drawing) return;
    const p = point(e);
    ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
    last = p;
  });
  const end = () => { if (!drawing) return; drawing = false; onStroke(); };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  reset();
  return {reset, context: ctx};
}

// A small line chart on a canvas: no library, nothing fetched from anywhere.
"use strict";

function drawChart(canvas, times, series, unit) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 46, right = 8, top = 18, bottom = 18;
  const plotW = width - left - right, plotH = height - top - bottom;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  max = niceCeil((max || 1) / 4) * 4;
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#262b36";
  ctx.fillStyle = "#9aa3b2";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.fillText(formatNumber((max * i) / 4) + (unit || ""), 2, y + 4);
  }
  const n = times.length;
  if (n > 1) {
    const span = times[n - 1] - times[0];
    ctx.fillText("-" + Math.round(span) + " s", left, height - 4);
    ctx.fillText("now", left + plotW - 22, height - 4);
  }
  let legendX = left;
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const x = left + (n > 1 ? (plotW * (times[i] - times[0])) / (times[n - 1] - times[0] || 1) : plotW);
      const y = top + plotH - (plotH * v) / max;
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
    ctx.fillStyle = s.color;
    ctx.fillRect(legendX, 5, 10, 3);
    ctx.fillStyle = "#9aa3b2";
    ctx.fillText(s.label, legendX + 14, 10);
    legendX += 20 + ctx.measureText(s.label).width + 10;
  }
}

function niceCeil(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function formatNumber(value) {
  if (value >= 1000) return (value / 1000).toFixed(value >= 10000 ? 0 : 1) + "k";
  if (value >= 10 || value === 0) return String(Math.round(value));
  return value.toFixed(1);
}

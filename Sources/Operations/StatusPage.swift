/// The live status page served at `/`: one file, embedded in the binary (no CDN, no build
/// step; it works on a site LAN without internet). It reads `/api/status` every 2 s and draws
/// it with `textContent` only (a device's text can never become markup). Read-only: nothing on
/// it writes a device. Laid out for a phone first; wider screens get more columns.
public enum StatusPage {
    public static let html: [UInt8] = Array(#"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gateway status</title>
<style>
:root { --bg:#f4f5f7; --card:#fff; --ink:#1d2330; --mute:#677085; --line:#e3e6ec; --ok:#1f8a4c; --bad:#c62828; --unk:#8a8f98; }
@media (prefers-color-scheme: dark) { :root { --bg:#12151b; --card:#1b2029; --ink:#e8ebf1; --mute:#9aa3b5; --line:#2a313d; } }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { position:sticky; top:0; z-index:1; background:var(--card); border-bottom:1px solid var(--line); padding:10px 14px; display:flex; flex-wrap:wrap; gap:6px 14px; align-items:center; }
header h1 { font-size:17px; margin:0; flex:1 1 auto; }
.pill { display:inline-block; padding:2px 10px; border-radius:999px; font-size:13px; font-weight:600; color:#fff; background:var(--unk); }
.pill.online, .pill.ok { background:var(--ok); } .pill.offline, .pill.bad { background:var(--bad); }
main { padding:12px; display:grid; gap:12px; grid-template-columns:1fr; max-width:1200px; margin:0 auto; }
@media (min-width:700px) { main { grid-template-columns:repeat(2, 1fr); } }
@media (min-width:1050px) { main { grid-template-columns:repeat(3, 1fr); } }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; min-width:0; }
section h2 { font-size:16px; margin:0 0 4px; display:flex; gap:8px; align-items:center; justify-content:space-between; }
.meta { color:var(--mute); font-size:13px; overflow-wrap:anywhere; }
.err { color:var(--bad); font-size:13px; overflow-wrap:anywhere; }
table { width:100%; border-collapse:collapse; margin-top:6px; }
td { padding:5px 0; border-top:1px solid var(--line); vertical-align:top; }
td.value { text-align:right; font-weight:600; font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }
td.age { text-align:right; color:var(--mute); font-size:12px; width:4.5em; }
#commands { grid-column:1 / -1; }
#commands td { font-size:13px; padding-right:6px; }
#commands td.when { white-space:nowrap; }
#banner { display:none; background:var(--bad); color:#fff; padding:6px 14px; font-size:14px; }
</style>
</head>
<body>
<div id="banner">Lost contact with the gateway; retrying.</div>
<header>
  <h1 id="title">Gateway</h1>
  <span>MQTT <span id="mqtt" class="pill">…</span></span>
  <span>Health <span id="health" class="pill">…</span></span>
  <span id="clock" class="pill bad" style="display:none" title="signed commands and commands judged by command_max_age_ms are refused until the system clock is synchronised (NTP)">clock not synchronised</span>
  <span class="meta" id="uptime"></span>
</header>
<main id="devices"></main>
<main><section id="commands"><h2>Last commands</h2><table><tbody id="commandRows"></tbody></table><div class="meta" id="noCommands">None yet.</div></section></main>
<script>
"use strict";
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 1) return "now";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}
function ago(s) { const a = age(s); return a === "now" || a === "never" ? a : a + " ago"; }
function shown(v) { return v === null || v === undefined ? "–" : (typeof v === "string" ? v : JSON.stringify(v)); }
function deviceCard(d) {
  const s = el("section", "device"); s.dataset.name = d.name;
  const h = el("h2"); h.append(el("span", "name", d.name), el("span", "pill state " + d.state, d.state)); s.append(h);
  s.append(el("div", "meta", (d.bus ? "bus " + d.bus + " · last poll " : "serial · last frame ") + ago(d.last_poll_age_s)));
  if (d.last_error) s.append(el("div", "err", d.last_error));
  const t = el("table"), b = el("tbody");
  for (const p of d.points) {
    const r = el("tr", "point"); r.dataset.name = p.name;
    r.append(el("td", "pname", p.name), el("td", "value", shown(p.value) + (p.unit && p.value !== null ? " " + p.unit : "")), el("td", "age", p.age_s == null ? "" : age(p.age_s)));
    b.append(r);
  }
  t.append(b); s.append(t);
  return s;
}
function render(st) {
  document.title = "Gateway " + st.gateway.id;
  document.getElementById("title").textContent = "Gateway " + st.gateway.id;
  const m = document.getElementById("mqtt"); m.textContent = st.mqtt.connected ? "connected" : "disconnected"; m.className = "pill " + (st.mqtt.connected ? "ok" : "bad");
  const h = document.getElementById("health"); h.textContent = st.health.ok ? "ok" : "problem"; h.className = "pill " + (st.health.ok ? "ok" : "bad"); h.title = st.health.reasons.join("\n");
  document.getElementById("clock").style.display = st.gateway.clock && st.gateway.clock.required && !st.gateway.clock.synchronised ? "" : "none";
  document.getElementById("uptime").textContent = "v" + st.gateway.version + " · up " + age(st.gateway.uptime_s);
  document.getElementById("devices").replaceChildren(...st.devices.map(deviceCard));
  const rows = st.commands.map(c => {
    const r = el("tr", "command");
    const when = new Date(c.at * 1000).toLocaleTimeString([], { hour12: false });
    const ok = c.answer && c.answer.ok;
    r.append(el("td", "meta when", when), el("td", "", c.device + " / " + c.point + (c.value ? " = " + c.value : "")),
             el("td", ok ? "" : "err", ok ? "ok" : (c.answer && c.answer.error) || "refused"), el("td", "age", Math.round(c.latency_ms) + " ms"));
    return r;
  });
  document.getElementById("commandRows").replaceChildren(...rows);
  document.getElementById("noCommands").style.display = rows.length ? "none" : "block";
}
async function refresh() {
  try {
    const r = await fetch("api/status", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status);
    render(await r.json());
    document.getElementById("banner").style.display = "none";
  } catch (e) {
    document.getElementById("banner").style.display = "block";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""#.utf8)
}

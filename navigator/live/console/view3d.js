// The console's 3D view: the implant as points and lines on a 2D canvas (orthographic projection, drag to
// rotate, wheel to zoom). No WebGL and no library: a few dozen needles and seeds need no more, it draws the same
// on a tablet, a locked-down hospital PC and headless Chromium, and there is nothing to vendor. Geometry is read
// as the API gives it (LPS mm of one frame of reference per scene) and shown RAS-style: patient left to the
// right of the screen, head up.
"use strict";

const View3D = (() => {
  let source = () => ({ plan: null, check: null, post: null, structures: null });
  const ROLE_COLOR = { target: "#ff6b6b", ctv: "#f0a35e", oar: "#6cb6ff" };

  function contours(structures, map, lines, legend) {
    // the pre-plan's target, CTV and OARs as their contour outlines (the body outline is left out: it would
    // dwarf the implant); ``map`` takes a pre-plan point into the scene's frame
    if (!structures) return;
    const shown = new Set();
    for (const s of structures.structures || []) {
      if (s.role === "body") continue;
      const color = ROLE_COLOR[s.role] || "#6cb6ff";
      for (const c of s.contours) {
        for (let i = 0; i < c.length; i++)
          lines.push({ a: map(c[i]), b: map(c[(i + 1) % c.length]), color, width: 1, context: true });
      }
      shown.add(s.role);
    }
    const words = { target: "target (GTV) outline", ctv: "CTV outline", oar: "organ at risk outline" };
    for (const role of ["target", "ctv", "oar"]) if (shown.has(role)) legend.push([ROLE_COLOR[role], words[role]]);
  }

  function mapper(m) {
    if (!m) return (p) => p;
    const M = Array.isArray(m[0]) ? m.flat() : m;
    return (p) => [0, 1, 2].map((r) => M[4 * r] * p[0] + M[4 * r + 1] * p[1] + M[4 * r + 2] * p[2] + M[4 * r + 3]);
  }
  const view = { yaw: -0.6, pitch: 0.45, zoom: 1, drag: null };

  function scene() {
    const { plan, check, post, structures } = source();
    // Each scene stays in one frame of reference: the pre-plan CT's, the needle check's intraop CT's, or the
    // post-implant CT's (the API gives each result in its own frame).
    const which = document.querySelector("input[name=scene]:checked").value;
    const lines = [], points = [], legend = [];
    if (which === "plan" && plan) {
      for (const n of plan.needles || []) {
        lines.push({ a: n.entry_mm, b: n.tip_mm, color: "#8a94a6", width: 2 });
        points.push({ p: n.tip_mm, color: "#8a94a6", r: 2, label: n.hole ? `${n.id} ${n.hole}` : n.id });
      }
      for (const sd of plan.seeds || []) points.push({ p: sd.position_mm, color: "#c58a00", r: 4 });
      legend.push(["#8a94a6", "planned needle (entry → tip), id and template hole"], ["#c58a00", "planned seed"]);
      contours(structures, (p) => p, lines, legend);
    } else if (which === "needles" && check) {
      const c = check;
      for (const n of c.needles) {
        if (n.planned_entry_mm && n.planned_tip_mm)
          lines.push({ a: n.planned_entry_mm, b: n.planned_tip_mm, color: "#8a94a6", dash: [6, 4], width: 1.5 });
        if (n.found && n.tip_mm) {
          const len = n.planned_entry_mm && n.planned_tip_mm ? dist(n.planned_entry_mm, n.planned_tip_mm) : 60;
          const entry = n.axis ? n.tip_mm.map((t, i) => t - n.axis[i] * len) : n.planned_entry_mm;
          const color = n.within_tolerance ? "#2e9d57" : "#d93025";
          if (entry) lines.push({ a: entry, b: n.tip_mm, color, width: 2.5 });
          points.push({ p: n.tip_mm, color, r: 4, label: n.id });
        } else if (n.planned_tip_mm) {
          points.push({ p: n.planned_tip_mm, color: "#d93025", r: 4, label: `${n.id}?`, hollow: true });
        }
      }
      const reg = c.registration || {};
      if (reg.region_centre_mm && reg.region_half_mm && reg.fixed_to_moving)
        box(reg.region_centre_mm, reg.region_half_mm, reg.fixed_to_moving, lines);
      legend.push(["#8a94a6", "planned needle (dashed)"], ["#2e9d57", "found, within tolerance"],
                  ["#d93025", "found out of tolerance / not found (hollow)"], ["#c58a00", "target region (registration box)"]);
      contours(structures, mapper(reg.fixed_to_moving), lines, legend);  // the pre-plan's outlines, registered
    } else if (which === "seeds" && post) {
      const p = post;
      for (const s of p.seeds || []) points.push({ p: s.position_mm, color: "#c58a00", r: 4, axis: s.axis });
      for (const c of p.cold_spots || [])  // a sphere of the cold spot's volume (1 cc = 1000 mm3)
        points.push({ p: c.centroid_mm, color: "#1a73e8", r_mm: Math.cbrt((3 * 1000 * (c.volume_cc || 0)) / (4 * Math.PI)),
                      hollow: true });
      for (const s of (p.supplementary && p.supplementary.seeds) || []) {
        if (s.entry_mm) lines.push({ a: s.entry_mm, b: s.position_mm, color: "#00a3bf", dash: [4, 4], width: 1 });
        points.push({ p: s.position_mm, color: "#00a3bf", r: 5 });
      }
      legend.push(["#c58a00", "seed found"], ["#1a73e8", "cold spot (a sphere of its volume)"],
                  ["#00a3bf", "proposed supplementary seed and its path"]);
      contours(structures, mapper((p.registration || {}).fixed_to_moving), lines, legend);
    }
    return { lines, points, legend, which };
  }

  function dist(a, b) { return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]); }

  function box(centre, half, m, lines) {
    // the registration's target region (pre-plan frame) mapped into the intraop frame by fixed_to_moving (4x4)
    const M = Array.isArray(m[0]) ? m.flat() : m;
    const map = (p) => [0, 1, 2].map((r) => M[4 * r] * p[0] + M[4 * r + 1] * p[1] + M[4 * r + 2] * p[2] + M[4 * r + 3]);
    const h = Array.isArray(half) ? half : [half, half, half];
    const corner = (i) => map([0, 1, 2].map((k) => centre[k] + ((i >> k) & 1 ? h[k] : -h[k])));
    for (let i = 0; i < 8; i++)
      for (let k = 0; k < 3; k++)
        if (!((i >> k) & 1)) lines.push({ a: corner(i), b: corner(i | (1 << k)), color: "#c58a00", width: 1 });
  }

  function draw() {
    const canvas = document.getElementById("view3d");
    if (!canvas || canvas.offsetParent === null) return;  // not on screen: drawn when shown
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    if (rect.width > 0) {
      canvas.width = Math.round(rect.width * dpr);
      canvas.height = Math.round(rect.height * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = canvas.width / dpr, H = canvas.height / dpr;
    g.fillStyle = "#10141b";
    g.fillRect(0, 0, W, H);
    const sc = scene();
    const legend = document.getElementById("view3d-legend");
    clear(legend);
    for (const [color, text] of sc.legend) {
      const s = document.createElement("span");
      s.innerHTML = `<i style="background:${color}"></i>`;
      s.append(text);
      legend.appendChild(s);
    }
    // the view frames the implant; outlines of the anatomy are context and may reach beyond it
    const all = [...sc.lines.filter((l) => !l.context).flatMap((l) => [l.a, l.b]), ...sc.points.map((p) => p.p)];
    if (!all.length) {
      g.fillStyle = "#c9d1d9";
      g.font = "16px system-ui, sans-serif";
      g.fillText({ plan: "No pre-plan loaded yet.", needles: "No needle check yet." }[sc.which] ||
               "No post-implant evaluation yet.", 24, 36);
      return;
    }
    const centre = [0, 1, 2].map((k) => (Math.min(...all.map((p) => p[k])) + Math.max(...all.map((p) => p[k]))) / 2);
    const radius = Math.max(10, ...all.map((p) => dist(p, centre)));
    const scale = (view.zoom * 0.45 * Math.min(W, H)) / radius;
    const cy = Math.cos(view.yaw), sy = Math.sin(view.yaw), cp = Math.cos(view.pitch), sp = Math.sin(view.pitch);
    // LPS -> screen: x = patient's left to the right of the screen... as seen from the front (anterior), head up.
    const project = (p) => {
      const x = -(p[0] - centre[0]), y = -(p[1] - centre[1]), z = p[2] - centre[2];  // RAS about the centre
      const x1 = cy * x + sy * y, y1 = -sy * x + cy * y;           // yaw about the S axis
      const z2 = cp * z - sp * y1, y2 = sp * z + cp * y1;           // pitch about the screen's horizontal
      return [W / 2 - scale * x1, H / 2 - scale * z2, y2];
    };
    const items = [];
    for (const l of sc.lines) {
      const a = project(l.a), b = project(l.b);
      items.push({ depth: (a[2] + b[2]) / 2, draw: () => {
        g.strokeStyle = l.color; g.lineWidth = l.width || 1.5; g.setLineDash(l.dash || []);
        g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke(); g.setLineDash([]);
      } });
    }
    for (const pt of sc.points) {
      const a = project(pt.p);
      items.push({ depth: a[2], draw: () => {
        if (pt.axis) {
          const e = project(pt.p.map((v, i) => v + 2.25 * pt.axis[i])), f = project(pt.p.map((v, i) => v - 2.25 * pt.axis[i]));
          g.strokeStyle = pt.color; g.lineWidth = 4; g.beginPath(); g.moveTo(f[0], f[1]); g.lineTo(e[0], e[1]); g.stroke();
        }
        g.beginPath(); g.arc(a[0], a[1], pt.r_mm ? Math.max(3, pt.r_mm * scale) : pt.r, 0, 2 * Math.PI);
        if (pt.hollow) { g.strokeStyle = pt.color; g.lineWidth = 2; g.stroke(); }
        else if (!pt.axis) { g.fillStyle = pt.color; g.fill(); }
        if (pt.label) { g.fillStyle = "#e6edf3"; g.font = "12px system-ui, sans-serif"; g.fillText(pt.label, a[0] + 6, a[1] - 6); }
      } });
    }
    items.sort((u, v) => u.depth - v.depth);  // far first
    items.forEach((it) => it.draw());
    axes(g, project, centre, radius, H);
  }

  function axes(g, project, centre, radius, H) {
    // a small orientation gizmo: patient Left, Posterior, Superior (LPS) from the same rotation
    const o = project(centre);
    const L = 0.25 * radius;
    const ends = [["L", [centre[0] + L, centre[1], centre[2]], "#ff7b72"], ["P", [centre[0], centre[1] + L, centre[2]], "#7ee787"],
                  ["S", [centre[0], centre[1], centre[2] + L], "#79c0ff"]];
    g.save();
    g.translate(60 - o[0], H - 60 - o[1]);
    for (const [name, p, color] of ends) {
      const e = project(p);
      const dx = e[0] - o[0], dy = e[1] - o[1], n = Math.hypot(dx, dy) || 1, s = Math.min(1, 40 / n);
      g.strokeStyle = color; g.lineWidth = 2; g.beginPath(); g.moveTo(o[0], o[1]);
      g.lineTo(o[0] + dx * s, o[1] + dy * s); g.stroke();
      g.fillStyle = color; g.font = "bold 12px system-ui, sans-serif"; g.fillText(name, o[0] + dx * s + 3, o[1] + dy * s + 3);
    }
    g.restore();
  }

  function wire(data) {
    source = data;
    const c = document.getElementById("view3d");
    c.addEventListener("pointerdown", (e) => { view.drag = [e.clientX, e.clientY]; c.setPointerCapture(e.pointerId); });
    c.addEventListener("pointermove", (e) => {
      if (!view.drag) return;
      view.yaw += (e.clientX - view.drag[0]) * 0.01;
      view.pitch = Math.max(-1.5, Math.min(1.5, view.pitch + (e.clientY - view.drag[1]) * 0.01));
      view.drag = [e.clientX, e.clientY];
      draw();
    });
    c.addEventListener("pointerup", () => { view.drag = null; });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      view.zoom = Math.max(0.2, Math.min(8, view.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
      draw();
    }, { passive: false });
    document.getElementById("view-reset").addEventListener("click", () => { view.yaw = -0.6; view.pitch = 0.45; view.zoom = 1; draw(); });
    for (const r of document.querySelectorAll("input[name=scene]")) r.addEventListener("change", draw);
    window.addEventListener("resize", draw);
  }

  return { wire, draw };
})();

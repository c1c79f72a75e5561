// A drawing -> the 28x28 image barenet's network reads, in JavaScript: the steps of
// src/barenet/data/images.py's prepare_digit (what `barenet predict` does to a photo), for the
// static demo. Images are Float32Array in row-major order with their height and width.
"use strict";

const prepare = (() => {
  const TRIM = 0.002, STROKE = 2.4;
  const roundEven = v => {  // Python's round(): halves to the even neighbour
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  };
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // RGBA (a canvas's ImageData) -> grey as Pillow's convert("L"), transparency on white paper
  function greyscale(rgba, H, W) {
    const g = new Float32Array(H * W);
    for (let i = 0; i < H * W; i++) {
      const [r, gr, b, a] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2], rgba[4 * i + 3]];
      const blend = v => Math.round((v * a + 255 * (255 - a)) / 255);
      g[i] = (blend(r) * 19595 + blend(gr) * 38470 + blend(b) * 7471 + 0x8000) >> 16;
    }
    return g;
  }

  function median(values) {
    const s = Float32Array.from(values).sort(), n = s.length;
    return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }

  // Pillow's GaussianBlur: three box blurs whose (fractional) radius gives the Gaussian's
  // variance, rows then columns, rounded to whole grey levels after each pass
  function gaussianBlur(img, H, W, sigma) {
    const passes = 3, s2 = sigma * sigma / passes, L = Math.sqrt(12 * s2 + 1);
    const l = Math.floor((L - 1) / 2);
    const r = l + (2 * l + 1) * (l * (l + 1) - 3 * s2) / (6 * (s2 - (l + 1) * (l + 1)));
    let out = Float32Array.from(img);
    const box = (get, set, n, count) => {
      const ri = Math.floor(r), frac = r - ri, norm = 1 / (2 * r + 1);
      for (let line = 0; line < count; line++) {
        const src = new Float32Array(n);
        for (let i = 0; i < n; i++) src[i] = get(line, i);
        for (let i = 0; i < n; i++) {
          let acc = 0;
          for (let j = -ri; j <= ri; j++) acc += src[clamp(i + j, 0, n - 1)];
          acc += frac * (src[clamp(i - ri - 1, 0, n - 1)] + src[clamp(i + ri + 1, 0, n - 1)]);
          set(line, i, Math.round(acc * norm));
        }
      }
    };
    for (let p = 0; p < passes; p++) {
      box((y, x) => out[y * W + x], (y, x, v) => { out[y * W + x] = v; }, W, H);
    }
    for (let p = 0; p < passes; p++) {
      box((x, y) => out[y * W + x], (x, y, v) => { out[y * W + x] = v; }, H, W);
    }
    return out;
  }

  // Otsu's threshold over a 256-bin histogram of values in [0, 255]
  function otsu(values) {
    const hist = new Float64Array(256);
    for (const v of values) hist[clamp(Math.floor(v), 0, 255)] += 1;
    let w0 = 0, mu0 = 0, total = 0, best = -1, at = 0;
    for (let b = 0; b < 256; b++) total += hist[b] / values.length * (b + 0.5);
    for (let b = 0; b < 256; b++) {
      const p = hist[b] / values.length;
      w0 += p; mu0 += p * (b + 0.5);
      const between = w0 > 0 && w0 < 1 ? (total * w0 - mu0) ** 2 / (w0 * (1 - w0)) : 0;
      if (between > best) { best = between; at = b + 0.5; }
    }
    return at;
  }

  function span(profile) {
    const sum = profile.reduce((a, b) => a + b, 0);
    let c = 0, lo = -1, hi = -1;
    for (let i = 0; i < profile.length; i++) {
      c += profile[i] / sum;
      if (lo < 0 && c >= TRIM) lo = i;
      if (hi < 0 && c >= 1 - TRIM) hi = i;
    }
    if (hi < 0) hi = profile.length - 1;
    return [lo, Math.max(hi + 1, lo + 1)];
  }

  // Pillow's LANCZOS resize: separable, rows first, a*sinc(x)sinc(x/3) widened when shrinking,
  // each pass rounded and clipped to 0..255
  function resize(img, H, W, outH, outW) {
    const lanczos = x => {
      const sinc = t => t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t);
      return Math.abs(x) < 3 ? sinc(x) * sinc(x / 3) : 0;
    };
    const pass = (src, n, m, lines, get, set) => {  // n samples -> m samples, along lines
      const scale = n / m, support = 3 * Math.max(scale, 1), ss = 1 / Math.max(scale, 1);
      for (let i = 0; i < m; i++) {
        const centre = (i + 0.5) * scale;
        const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
        const hi = Math.min(Math.trunc(centre + support + 0.5), n);
        const w = [];
        let total = 0;
        for (let x = lo; x < hi; x++) { const k = lanczos((x - centre + 0.5) * ss); w.push(k); total += k; }
        for (let line = 0; line < lines; line++) {
          let acc = 0;
          for (let x = lo; x < hi; x++) acc += get(src, line, x) * w[x - lo] / total;
          set(line, i, clamp(Math.round(acc), 0, 255));
        }
      }
    };
    const mid = new Float32Array(H * outW);
    if (outW !== W) pass(img, W, outW, H, (s, y, x) => s[y * W + x], (y, x, v) => { mid[y * outW + x] = v; });
    else mid.set(img);
    const out = new Float32Array(outH * outW);
    if (outH !== H) pass(mid, H, outH, outW, (s, x, y) => s[y * outW + x], (x, y, v) => { out[y * outW + x] = v; });
    else out.set(mid);
    return out;
  }

  function strokeWidth(img, H, W) {
    const ink = (y, x) => y >= 0 && y < H && x >= 0 && x < W && img[y * W + x] >= 128;
    let area = 0, inner = 0;
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      if (!ink(y, x)) continue;
      area++;
      if (ink(y - 1, x) && ink(y + 1, x) && ink(y, x - 1) && ink(y, x + 1)) inner++;
    }
    return area ? 2 * area / Math.max(area - inner, 1) : 0;
  }

  function maxFilter(img, H, W, k) {  // edges extended, as Pillow's MaxFilter
    const out = new Float32Array(H * W), h = k >> 1;
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      let m = 0;
      for (let dy = -h; dy <= h; dy++) for (let dx = -h; dx <= h; dx++) {
        m = Math.max(m, img[clamp(y + dy, 0, H - 1) * W + clamp(x + dx, 0, W - 1)]);
      }
      out[y * W + x] = m;
    }
    return out;
  }

  // rgba: H*W*4 bytes -> 28*28 numbers 0-255, or null when no ink stands out
  function digit(rgba, H, W) {
    let grey = greyscale(rgba, H, W);
    const border = [];
    for (let x = 0; x < W; x++) border.push(grey[x], grey[(H - 1) * W + x]);
    for (let y = 0; y < H; y++) border.push(grey[y * W], grey[y * W + W - 1]);
    const paper = median(border);
    if (H === 28 && W === 28 && paper < 128) {  // already MNIST's form
      let max = 0; for (const v of grey) max = Math.max(max, v);
      return max - paper < 16 ? null : Array.from(grey, v => clamp(Math.floor(v + 0.5), 0, 255));
    }
    if (paper >= 128) grey = grey.map(v => 255 - v);  // dark ink on light paper
    const background = gaussianBlur(grey.map(Math.floor), H, W, Math.max(H, W) / 12);
    let ink = grey.map((v, i) => Math.max(v - background[i], 0));
    let max = 0; for (const v of ink) max = Math.max(max, v);
    if (max < 16) return null;
    ink = ink.map(v => v * 255 / max);
    const t = otsu(ink);
    ink = ink.map(v => v < t / 2 ? 0 : v);
    const rows = new Float32Array(H), cols = new Float32Array(W);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) { rows[y] += ink[y * W + x]; cols[x] += ink[y * W + x]; }
    const [top, bottom] = span(rows), [left, right] = span(cols);
    const h = bottom - top, w = right - left;
    const crop = new Float32Array(h * w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) crop[y * w + x] = Math.floor(clamp(ink[(y + top) * W + x + left], 0, 255));
    // at 4x the final size, where the stroke width is measured and fixed
    const scale = 80 / Math.max(h, w);
    const sw = Math.max(1, roundEven(w * scale)), sh = Math.max(1, roundEven(h * scale));
    let work = resize(crop, h, w, sh, sw);
    const width = strokeWidth(work, sh, sw), wanted = 4 * STROKE;
    if (width > 0 && width < 0.8 * wanted) work = maxFilter(work, sh, sw, Math.min(roundEven(wanted - width) | 1, 15));
    const th = Math.max(1, roundEven(sh / 4)), tw = Math.max(1, roundEven(sw / 4));
    const small = resize(work, sh, sw, th, tw);
    let top255 = 0; for (const v of small) top255 = Math.max(top255, v);
    if (top255 <= 0) return null;
    let mass = 0, cy = 0, cx = 0;
    for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) {
      const v = small[y * tw + x] * 255 / top255;
      small[y * tw + x] = v; mass += v; cy += y * v; cx += x * v;
    }
    cy /= mass; cx /= mass;
    const oy = clamp(roundEven(13.5 - cy), 0, 28 - th), ox = clamp(roundEven(13.5 - cx), 0, 28 - tw);
    const out = new Array(28 * 28).fill(0);
    for (let y = 0; y < th; y++) for (let x = 0; x < tw; x++) {
      out[(y + oy) * 28 + x + ox] = clamp(Math.floor(small[y * tw + x] + 0.5), 0, 255);
    }
    return out;
  }

  // rgba -> 28*28 numbers 0-255 for a model trained on images kept as they were (barenet
  // train --data ... --prepare resize): grey, resized with Lanczos, inverted if its data was
  function resized(rgba, H, W, invert) {
    const small = resize(greyscale(rgba, H, W), H, W, 28, 28);
    return Array.from(small, v => invert ? 255 - v : v);
  }

  return {digit, resized, greyscale, gaussianBlur, resize, otsu};
})();

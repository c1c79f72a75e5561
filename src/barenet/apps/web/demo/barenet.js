// barenet in the browser: the forward pass of every barenet layer, in plain JavaScript, for
// the static demo that `barenet export MODEL --web DIR` writes. One image at a time; arrays
// are Float32Array in barenet's own layout: a vector (D), or an image (H, W, C) in row-major
// order, channels last. The maths is src/barenet/nn/reference.py's, line for line.
"use strict";

const barenet = (() => {
  // An array with its shape: {data: Float32Array, shape: [D] or [H, W, C]}.
  const tensor = (data, shape) => ({data, shape});

  const LAYERS = {
    Reshape: (L, x) => tensor(x.data, L.shape),
    Flatten: (L, x) => tensor(x.data, [x.data.length]),
    // out_j = b_j + sum_i x_i W_ij, W stored (D, H) row-major. DropConnect: its mean network.
    Dense: (L, x) => {
      const W = L.params.W, b = L.params.b, D = L.in_features, H = L.out_features;
      const out = new Float32Array(H);
      for (let j = 0; j < H; j++) out[j] = b[j];
      for (let i = 0; i < D; i++) {
        const xi = x.data[i];
        if (xi === 0) continue;  // after a ReLU, many inputs are zero
        const row = i * H;
        for (let j = 0; j < H; j++) out[j] += xi * W[row + j];
      }
      return tensor(out, [H]);
    },
    // out[y, x, f] = b_f + sum over (ky, kx, c) of in[y*s + ky - p, x*s + kx - p, c] W[ky, kx, c, f]
    Conv2D: (L, x) => {
      const [H, Wd, C] = x.shape, k = L.kernel_size, s = L.stride, p = L.padding;
      const F = L.out_channels, W = L.params.W, b = L.params.b;
      const OH = Math.floor((H + 2 * p - k) / s) + 1, OW = Math.floor((Wd + 2 * p - k) / s) + 1;
      const out = new Float32Array(OH * OW * F);
      for (let oy = 0; oy < OH; oy++) for (let ox = 0; ox < OW; ox++) {
        const o = (oy * OW + ox) * F;
        for (let f = 0; f < F; f++) out[o + f] = b[f];
        for (let ky = 0; ky < k; ky++) {
          const iy = oy * s + ky - p;
          if (iy < 0 || iy >= H) continue;
          for (let kx = 0; kx < k; kx++) {
            const ix = ox * s + kx - p;
            if (ix < 0 || ix >= Wd) continue;
            const src = (iy * Wd + ix) * C, w0 = (ky * k + kx) * C * F;
            for (let c = 0; c < C; c++) {
              const v = x.data[src + c];
              if (v === 0) continue;
              const w = w0 + c * F;
              for (let f = 0; f < F; f++) out[o + f] += v * W[w + f];
            }
          }
        }
      }
      return tensor(out, [OH, OW, F]);
    },
    MaxPool2D: (L, x) => pool(x, L.kernel_size, L.stride, "max"),
    AvgPool2D: (L, x) => pool(x, L.kernel_size, L.kernel_size, "avg"),
    // each channel's mean and/or max over the whole image: (H, W, C) -> (C) or (2C)
    GlobalPool: (L, x) => {
      const [H, W, C] = x.shape, parts = [];
      for (const mode of L.mode.split("+")) {
        const v = new Float32Array(C).fill(mode === "max" ? -Infinity : 0);
        for (let i = 0; i < H * W; i++) for (let c = 0; c < C; c++) {
          const a = x.data[i * C + c];
          v[c] = mode === "max" ? Math.max(v[c], a) : v[c] + a;
        }
        if (mode === "avg") for (let c = 0; c < C; c++) v[c] /= H * W;
        parts.push(v);
      }
      const out = new Float32Array(parts.length * C);
      parts.forEach((v, k) => out.set(v, k * C));
      return tensor(out, [out.length]);
    },
    // gate_c = sigmoid(W2 relu(W1 mean(x) + b1) + b2)_c; out = x * gate, channel by channel
    SqueezeExcite: (L, x) => {
      const [H, W, C] = x.shape, P = L.params, R = P.b1.length;
      const mean = new Float32Array(C);
      for (let i = 0; i < H * W; i++) for (let c = 0; c < C; c++) mean[c] += x.data[i * C + c];
      for (let c = 0; c < C; c++) mean[c] /= H * W;
      const z = new Float32Array(R);
      for (let r = 0; r < R; r++) {
        let a = P.b1[r];
        for (let c = 0; c < C; c++) a += mean[c] * P.W1[c * R + r];
        z[r] = Math.max(a, 0);
      }
      const gate = new Float32Array(C);
      for (let c = 0; c < C; c++) {
        let a = P.b2[c];
        for (let r = 0; r < R; r++) a += z[r] * P.W2[r * C + c];
        gate[c] = 1 / (1 + Math.exp(-a));
      }
      const out = new Float32Array(x.data.length);
      for (let i = 0; i < H * W; i++) for (let c = 0; c < C; c++) out[i * C + c] = x.data[i * C + c] * gate[c];
      return tensor(out, x.shape);
    },
    // inference: (x - running mean) / sqrt(running var + eps) * gamma + beta, per feature
    BatchNorm: (L, x) => {
      const P = L.params, n = P.gamma.length, out = new Float32Array(x.data.length);
      const scale = new Float32Array(n), shift = new Float32Array(n);
      for (let c = 0; c < n; c++) {
        scale[c] = P.gamma[c] / Math.sqrt(P.running_var[c] + L.eps);
        shift[c] = P.beta[c] - P.running_mean[c] * scale[c];
      }
      for (let i = 0; i < x.data.length; i++) out[i] = x.data[i] * scale[i % n] + shift[i % n];
      return tensor(out, x.shape);
    },
    ReLU: (L, x) => tensor(x.data.map(v => v > 0 ? v : 0), x.shape),
    Dropout: (L, x) => x,  // the identity at inference
  };
  LAYERS.DropConnect = LAYERS.Dense;

  function pool(x, k, s, how) {
    const [H, W, C] = x.shape;
    const OH = Math.floor((H - k) / s) + 1, OW = Math.floor((W - k) / s) + 1;
    const out = new Float32Array(OH * OW * C);
    for (let oy = 0; oy < OH; oy++) for (let ox = 0; ox < OW; ox++) for (let c = 0; c < C; c++) {
      let v = how === "max" ? -Infinity : 0;
      for (let ky = 0; ky < k; ky++) for (let kx = 0; kx < k; kx++) {
        const a = x.data[((oy * s + ky) * W + ox * s + kx) * C + c];
        v = how === "max" ? Math.max(v, a) : v + a;
      }
      out[(oy * OW + ox) * C + c] = how === "max" ? v : v / (k * k);
    }
    return tensor(out, [OH, OW, C]);
  }

  function softmax(scores) {
    const m = Math.max(...scores), e = scores.map(v => Math.exp(v - m));
    const total = e.reduce((a, b) => a + b, 0);
    return Array.from(e, v => v / total);
  }

  // The model file's weights: one base64 string of little-endian float32, each parameter an
  // [offset, length] into it.
  function load(model) {
    const bytes = Uint8Array.from(atob(model.weights), c => c.charCodeAt(0));
    const all = new Float32Array(bytes.buffer);
    for (const member of model.members) for (const L of member) {
      for (const [name, [offset, length]] of Object.entries(L.params || {})) {
        L.params[name] = all.subarray(offset, offset + length);
      }
    }
    return model;
  }

  // pixels: 28*28 numbers 0-255 (row-major) -> the class probabilities, averaged over an
  // ensemble's members
  function predict(model, pixels) {
    const p = new Array(model.classes.length).fill(0);
    for (const member of model.members) {
      let x = tensor(Float32Array.from(pixels, v => v / 255), [pixels.length]);
      for (const L of member) {
        const f = LAYERS[L.type];
        if (!f) throw new Error(`no JavaScript for layer ${L.type}`);
        x = f(L, x);
      }
      softmax(Array.from(x.data)).forEach((v, c) => { p[c] += v / model.members.length; });
    }
    return p;
  }

  return {load, predict, LAYERS};
})();

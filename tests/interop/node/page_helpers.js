// Browser-side helpers, inlined into the pages that
// tests/interop/test_chromium.py serves. Plain script, no modules.
"use strict";

// ws://host:port or wss://host:port, matching how the page was loaded.
const WS_BASE = location.origin.replace(/^http/, "ws");

// One WebSocket with a message queue: `await peer.recv()` in order.
class Peer {
  constructor(url, protocols) {
    const ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.events = []; // "open", "error", "close", in the order they came
    this.queue = [];
    this.waiter = null;
    this.closeEvent = null;
    // First, so that these are recorded before any other listener's promise
    // lets a scenario continue.
    for (const type of ["open", "error", "close"]) {
      ws.addEventListener(type, () => this.events.push(type));
    }
    this.opened = new Promise((resolve, reject) => {
      ws.addEventListener("open", () => resolve());
      ws.addEventListener("close", (e) =>
        reject(new Error(`closed before opening: ${e.code} ${e.reason}`)),
      );
    });
    this.opened.catch(() => {}); // not every scenario awaits it
    this.closed = new Promise((resolve) => {
      ws.addEventListener("close", (e) => {
        this.closeEvent = { code: e.code, reason: e.reason, wasClean: e.wasClean };
        resolve(this.closeEvent);
        if (this.waiter !== null) {
          this.waiter.reject(new Error(`closed: ${e.code} ${e.reason}`));
          this.waiter = null;
        }
      });
    });
    ws.addEventListener("message", (e) => {
      if (this.waiter !== null) {
        this.waiter.resolve(e.data);
        this.waiter = null;
      } else {
        this.queue.push(e.data);
      }
    });
  }

  static async open(url, protocols) {
    const peer = new Peer(url, protocols);
    await peer.opened;
    return peer;
  }

  recv() {
    if (this.queue.length > 0) return Promise.resolve(this.queue.shift());
    if (this.closeEvent !== null) {
      return Promise.reject(new Error(`closed: ${this.closeEvent.code}`));
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  send(data) {
    this.ws.send(data);
  }

  close(code, reason) {
    this.ws.close(code, reason);
    return this.closed;
  }
}

function toBytes(data) {
  if (typeof data === "string") return new TextEncoder().encode(data);
  return new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer);
}

function hex(data) {
  return Array.from(toBytes(data), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(data) {
  return hex(await crypto.subtle.digest("SHA-256", toBytes(data)));
}

function randomBytes(size) {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, i + 65536));
  }
  return bytes;
}

function sameBytes(a, b) {
  const x = toBytes(a);
  const y = toBytes(b);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

// What a received message is, in a form the Python side can compare.
function describe(data) {
  return typeof data === "string"
    ? { type: "text", text: data }
    : { type: "binary", hex: hex(data) };
}

// The sample messages of the echo tests (text, non-ASCII text, empty text,
// binary, empty binary), sent one at a time; each echo described.
async function echoSamples(peer) {
  const sent = ["hello", "ü€𝄞 unicode", "", new Uint8Array([0, 1, 2, 255]),
                new Uint8Array(0)];
  const echoes = [];
  for (const message of sent) {
    peer.send(message);
    echoes.push(describe(await peer.recv()));
  }
  return echoes;
}

// A peer built on the `ws` package, for tests/interop/test_node_ws.py.
//
//   node ws_peer.mjs server <deflate: 0|1>
//       listens on 127.0.0.1, a free port; prints {"event": "listening", "port": N}
//       and serves until stdin ends.
//   node ws_peer.mjs client <url> <deflate: 0|1>
//       connects to url; exits once the connection is closed, or drops it
//       when stdin ends.
//   node ws_peer.mjs drive <url> <deflate: 0|1> [subprotocol...]
//       connects to url offering those subprotocols, and is driven from
//       stdin instead of echoing (for a server that echoes, such as an app
//       under uvicorn); see "Driven" below.
//
// As a server or a client, on each connection it prints {"event": "open",
// ...}, echoes every message back with its type, and prints {"event":
// "close", "code", "reason"} at the end. A text message starting with "cmd:"
// is a command instead, as JSON:
//
//   {"cmd": "close", "code": 4000, "reason": "..."}   close with that code
//   {"cmd": "fragments", "parts": [...], "binary": false}
//                                  send one message, a frame per part
//   {"cmd": "stats"}               answer with the bytes read and written on
//                                  the TCP socket so far, as JSON text
//
// Output is one JSON object a line on stdout.
//
// Driven: after {"event": "open", ...}, it reads one JSON command a line on
// stdin, never echoes, and prints each message it receives as
// {"event": "message", "binary", "length", "sha256"} (hex):
//
//   {"send": "text"}                      send a text message
//   {"send": "<base64>", "binary": true}  send a binary message
//   {"cmd": "close" | "fragments", ...}   as above
//   {"cmd": "stats"}                      print {"event": "stats", "read",
//                                         "written"}, the socket's bytes
//
// It exits once the connection is closed, or drops it when stdin ends.

import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { WebSocket, WebSocketServer } from "ws";

const CMD = "cmd:";
const MAX_PAYLOAD = 64 * 1024 * 1024;

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function deflateOption(flag) {
  if (flag !== "0" && flag !== "1") throw new Error(`deflate must be 0 or 1, not ${flag}`);
  return flag === "1";
}

function command(ws, socket, { cmd, ...args }) {
  switch (cmd) {
    case "close":
      ws.close(args.code, args.reason);
      break;
    case "fragments": {
      const parts = args.parts.map((part) => Buffer.from(part, "utf8"));
      parts.forEach((part, i) =>
        ws.send(part, { binary: args.binary, fin: i === parts.length - 1 }),
      );
      break;
    }
    case "stats":
      ws.send(JSON.stringify({ read: socket.bytesRead, written: socket.bytesWritten }));
      break;
    default:
      emit({ event: "error", message: `unknown command ${cmd}` });
  }
}

// Prints "open" now and "close" at the end.
function announce(ws) {
  emit({ event: "open", extensions: ws.extensions, protocol: ws.protocol });
  ws.on("close", (code, reason) => emit({ event: "close", code, reason: reason.toString() }));
}

function reflect(ws, socket) {
  announce(ws);
  ws.on("message", (data, isBinary) => {
    if (!isBinary && data.length >= CMD.length && data.toString("utf8", 0, CMD.length) === CMD) {
      command(ws, socket, JSON.parse(data.toString("utf8", CMD.length)));
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
}

function reportMessages(ws) {
  announce(ws);
  ws.on("message", (data, isBinary) =>
    emit({
      event: "message",
      binary: isBinary,
      length: data.length,
      sha256: createHash("sha256").update(data).digest("hex"),
    }),
  );
}

function obey(ws, socket, line) {
  if (line.trim() === "") return;
  const order = JSON.parse(line);
  if (order.send !== undefined) {
    const data = order.binary ? Buffer.from(order.send, "base64") : order.send;
    ws.send(data, { binary: Boolean(order.binary) });
  } else if (order.cmd === "stats") {
    emit({ event: "stats", read: socket.bytesRead, written: socket.bytesWritten });
  } else {
    command(ws, socket, order);
  }
}

function reportErrors(ws) {
  ws.on("error", (error) => emit({ event: "error", message: error.message }));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "server") {
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    perMessageDeflate: deflateOption(args[0]),
    maxPayload: MAX_PAYLOAD,
  });
  server.on("connection", (ws, request) => {
    reportErrors(ws);
    reflect(ws, request.socket);
  });
  server.on("listening", () => emit({ event: "listening", port: server.address().port }));
  process.stdin.on("end", () => {
    for (const ws of server.clients) ws.terminate();
    server.close();
  });
  process.stdin.resume();
} else if (mode === "client") {
  const ws = new WebSocket(args[0], {
    perMessageDeflate: deflateOption(args[1]),
    maxPayload: MAX_PAYLOAD,
    handshakeTimeout: 10000,
  });
  ws.on("upgrade", (response) => ws.once("open", () => reflect(ws, response.socket)));
  reportErrors(ws);
  process.stdin.on("end", () => ws.terminate());
  process.stdin.resume();
  ws.on("close", () => process.stdin.destroy());
} else if (mode === "drive") {
  const [url, deflate, ...protocols] = args;
  const ws = new WebSocket(url, protocols, {
    perMessageDeflate: deflateOption(deflate),
    maxPayload: MAX_PAYLOAD,
    handshakeTimeout: 10000,
  });
  let socket = null;
  ws.on("upgrade", (response) => {
    socket = response.socket;
  });
  ws.once("open", () => reportMessages(ws));
  reportErrors(ws);
  // Orders come once "open" is printed: the test waits for it.
  createInterface({ input: process.stdin }).on("line", (line) => obey(ws, socket, line));
  process.stdin.on("end", () => ws.terminate());
  ws.on("close", () => process.stdin.destroy());
} else {
  throw new Error(
    "usage: ws_peer.mjs server <0|1> | client <url> <0|1> | drive <url> <0|1> [protocol...]",
  );
}

// Bun's own WebSocket server (uWebSockets), for the benchmark:
//   bun bun_server.mjs bun echo|broadcast ...   echo, and broadcast with server.publish
//   bun bun_server.mjs bun-hub hub ...          a hub: rooms are uWebSockets topics
// started by benchmarks/harness/servers.py (which pins it and execs it).
//
// Hub: the same Socket.IO framing as the Node and python-socketio peers, so
// that one load client speaks to all: `join` subscribes to the room's topic
// and acks; `publish` (and each publication of `burst`, one at a time, and
// POST /api/publish) is `server.publish(room, packet)`, the sender included.
// With --deflate, permessage-deflate with uWebSockets' shared compressor and
// decompressor (no context takeover either way, as the tidings hub agrees
// to it), and every publication published compressed.

import { eventPacket, msgPacket, onStop, openPacket, parseArgs, publication, ready } from "./common.mjs";

const MAX = 16 * 1024 * 1024;
const MAX_BURST = 1_000_000;
const args = parseArgs(process.argv.slice(2));
const hub = args.mode === "hub";
const compress = args.deflate;
let sids = 0;

function apiPublish(server, text) {
  let data;
  try {
    data = publication(text);
  } catch (e) {
    return Response.json({ error: { code: 400, message: String(e.message) } }, { status: 400 });
  }
  server.publish(args.room, msgPacket(data), compress);
  return Response.json({ ok: true });
}

function onHubMessage(server, ws, text) {
  if (text === "3") return; // a pong
  if (text === "40") {
    ws.send('40{"sid":"' + ws.data.sid + '"}');
    return;
  }
  const packet = eventPacket(text);
  const [room, ...rest] = packet === null ? [] : packet.args;
  if (typeof room !== "string") {
    ws.close(1003, "not a Socket.IO event packet with a room");
    return;
  }
  if (packet.event === "join") {
    ws.subscribe(room);
    if (packet.ack) ws.send("43" + packet.ack + "[true]");
  } else if (packet.event === "publish") {
    server.publish(room, msgPacket(rest[0]), compress);
  } else if (packet.event === "burst") {
    const [count, data] = rest;
    if (!Number.isInteger(count) || count < 1 || count > MAX_BURST) {
      ws.close(1003, "burst: count out of range");
      return;
    }
    for (let i = 0; i < count; i++) server.publish(room, msgPacket(data), compress);
  } else {
    ws.close(1003, "unknown event");
  }
}

const server = Bun.serve({
  hostname: args.host,
  port: args.port,
  async fetch(req, server) {
    if (hub && req.method === "POST" && new URL(req.url).pathname === "/api/publish") {
      return apiPublish(server, await req.text());
    }
    if (server.upgrade(req, { data: { sid: (++sids).toString(36) } })) return undefined;
    return new Response("a WebSocket server", { status: 426 });
  },
  websocket: {
    maxPayloadLength: MAX,
    idleTimeout: 0,
    perMessageDeflate: compress ? { compress: "shared", decompress: "shared" } : false,
    sendPings: false,
    open(ws) {
      if (hub) ws.send(openPacket(ws.data.sid, MAX));
      else if (args.mode === "broadcast") ws.subscribe("all");
    },
    message(ws, message) {
      if (hub) onHubMessage(server, ws, typeof message === "string" ? message : message.toString());
      else if (args.mode === "echo") ws.send(message);
      else server.publish("all", message);
    },
  },
});

const info = { version: Bun.version, loop: `Bun ${Bun.version} (uWebSockets)` };
if (hub) {
  info.hub =
    `Bun ${Bun.version} Bun.serve (uWebSockets) with Socket.IO framing written out (Engine.IO 4 open, ` +
    "connect, acked `join`): `join` is ws.subscribe(room), each publication (`publish`, each of a " +
    "`burst` in a synchronous loop, POST /api/publish) is server.publish(room, '42[\"msg\",...]'), " +
    "the sender included; " +
    (compress
      ? "perMessageDeflate {compress: 'shared', decompress: 'shared'}, each publication " +
        "server.publish(room, packet, true)"
      : "no compression") +
    ", no pings";
} else if (args.mode === "broadcast") {
  info.broadcast = "server.publish() to a topic every client subscribed to (uWebSockets)";
}
onStop(args, () => {
  server.stop(true);
  process.exit(0);
});
ready(server.port, info);

// Node.js servers for the benchmark, started by benchmarks/harness/servers.py
// (which pins it and execs it):
//   node node_server.mjs node-ws echo|broadcast ...   the ws package
//   node node_server.mjs node-socketio hub [--redis URL] ...   Socket.IO
//
// Socket.IO: WebSocket transport only, no compression, pings pushed out
// past any run (as python-socketio in servers.py); `join` enters the room
// and acks; `publish`, each publication of a `burst` (one at a time, in a
// synchronous loop) and POST /api/publish are io.to(room).emit("msg", data),
// the sender included. With --redis, one node of several sharing rooms
// through @socket.io/redis-adapter on that Redis. With --deflate,
// permessage-deflate as a Socket.IO user turns it on (ws's defaults: a
// compressor per connection, with context takeover), compressing messages
// of 32 bytes and more, as the tidings hub does.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { onStop, parseArgs, publication, ready } from "./common.mjs";

const MAX = 16 * 1024 * 1024;
const MAX_BURST = 1_000_000;
const version = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;
const args = parseArgs(process.argv.slice(2));

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: args.host, port: args.port, backlog: 1024 }, () => resolve(server.address().port));
  });
}

async function wsServer() {
  const { WebSocketServer } = await import("ws");
  const http = createServer((req, res) => res.writeHead(426).end());
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false, maxPayload: MAX });
  wss.on("connection", (ws) => {
    ws.on("message", (data, isBinary) => {
      if (args.mode === "echo") ws.send(data, { binary: isBinary });
      else for (const peer of wss.clients) peer.send(data, { binary: isBinary });
    });
  });
  const port = await listen(http);
  const info = { version: version("ws"), loop: `Node.js ${process.version}` };
  if (args.mode === "broadcast") info.broadcast = "ws.send() loop over wss.clients (ws has no broadcast)";
  ready(port, info);
  return () => http.close();
}

async function redisAdapter(io) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pub = createClient({ url: args.redis });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on("error", (e) => process.stderr.write(`redis: ${e}\n`));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
  // The adapter subscribes without saying when it is done; one more
  // subscription on the same connection is answered after its own, so that
  // a publication from another node never finds this one deaf.
  await sub.subscribe("tidings-bench:ready", () => {});
  return () => Promise.allSettled([pub.quit(), sub.quit()]);
}

function answer(res, status, json) {
  const body = JSON.stringify(json);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

async function socketioServer() {
  const { Server } = await import("socket.io");
  const http = createServer((req, res) => {
    if (req.method !== "POST" || req.url !== "/api/publish") {
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let data;
      try {
        data = publication(Buffer.concat(chunks).toString());
      } catch (e) {
        answer(res, 400, { error: { code: 400, message: String(e.message) } });
        return;
      }
      io.to(args.room).emit("msg", data);
      answer(res, 200, { ok: true });
    });
  });
  const io = new Server(http, {
    transports: ["websocket"],
    pingInterval: 900000,
    pingTimeout: 900000,
    maxHttpBufferSize: MAX,
    perMessageDeflate: args.deflate ? { threshold: 32 } : false,
    serveClient: false,
  });
  const closeRedis = args.redis === null ? null : await redisAdapter(io);
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack(true);
    });
    socket.on("publish", (room, data) => io.to(room).emit("msg", data));
    socket.on("burst", (room, count, data) => {
      if (!Number.isInteger(count) || count < 1 || count > MAX_BURST) {
        socket.disconnect(true);
        return;
      }
      for (let i = 0; i < count; i++) io.to(room).emit("msg", data);
    });
  });
  const port = await listen(http);
  const adapter =
    args.redis === null
      ? ""
      : `; @socket.io/redis-adapter ${version("@socket.io/redis-adapter")} on node-redis ` +
        `${version("redis")}: one node of several on one Redis, subscribed before it says it is ready`;
  ready(port, {
    version: version("socket.io"),
    loop: `Node.js ${process.version}`,
    hub:
      `Node.js ${process.version} Socket.IO ${version("socket.io")} (engine.io ${version("engine.io")}, ` +
      `ws ${version("ws")}), transports ['websocket'], ` +
      (args.deflate ? "perMessageDeflate {threshold: 32} (ws's defaults otherwise)" : "no compression") +
      ": `join` enters the room and " +
      "acks, each publication (`publish`, each of a `burst` in a synchronous loop, POST /api/publish " +
      "on the same port) is io.to(room).emit('msg', data), the sender included" +
      adapter,
  });
  return async () => {
    io.close();
    if (closeRedis !== null) await closeRedis();
  };
}

// Stop handlers first: the runner may stop the server as soon as it is ready.
let close = async () => {};
onStop(args, async () => {
  await close();
  process.exit(0);
});
close = await (args.server === "node-ws" ? wsServer() : socketioServer());

// What the Bun and Node.js servers share with benchmarks/harness/servers.py:
// the command line, the `ready` line, the stop conditions, and the few
// lines of Engine.IO 4 / Socket.IO 5 framing the load client speaks
// (harness/loadgen.py, SocketIOConn).

import { readdirSync } from "node:fs";

/** `NAME MODE --host H --port P --room R --max-seconds S [--watch-stdin] [--redis URL] [--deflate]`. */
export function parseArgs(argv) {
  const [server, mode, ...rest] = argv;
  const args = {
    server,
    mode,
    host: "127.0.0.1",
    port: 0,
    room: "bench",
    maxSeconds: 900,
    watchStdin: false,
    redis: null,
    deflate: false,
  };
  for (let i = 0; i < rest.length; i++) {
    const flag = rest[i];
    if (flag === "--watch-stdin") args.watchStdin = true;
    else if (flag === "--deflate") args.deflate = true;
    else if (flag === "--host") args.host = rest[++i];
    else if (flag === "--port") args.port = Number(rest[++i]);
    else if (flag === "--room") args.room = rest[++i];
    else if (flag === "--max-seconds") args.maxSeconds = Number(rest[++i]);
    else if (flag === "--redis") args.redis = rest[++i];
    else throw new Error(`unknown argument ${flag}`);
  }
  return args;
}

export function emit(fields) {
  process.stdout.write(JSON.stringify(fields) + "\n");
}

/** The `ready` line, as servers.py prints it. */
export function ready(port, info) {
  let fds = null;
  try {
    fds = readdirSync("/proc/self/fd").length;
  } catch {}
  emit({ event: "ready", port, pid: process.pid, fds, ...info });
}

/** Call `stop` once: on SIGTERM, at the end of stdin (if watched), or after `maxSeconds`. */
export function onStop(args, stop) {
  let done = false;
  const once = () => {
    if (!done) {
      done = true;
      stop();
    }
  };
  process.on("SIGTERM", once);
  process.on("SIGINT", once);
  if (args.watchStdin) {
    process.stdin.on("data", () => {});
    process.stdin.on("end", once);
    process.stdin.on("error", once);
    process.stdin.resume();
  }
  setTimeout(once, args.maxSeconds * 1000).unref?.();
}

/** Read a request's body and parse it as `{"channel": ..., "data": ...}` (POST /api/publish). */
export function publication(text) {
  const body = JSON.parse(text);
  if (body === null || typeof body !== "object" || !("data" in body)) {
    throw new Error("the body must be a JSON object with data");
  }
  return body.data;
}

/** Engine.IO's open packet: pings pushed out past any run, as in servers.py. */
export function openPacket(sid, maxPayload) {
  return "0" + JSON.stringify({ sid, upgrades: [], pingInterval: 900000, pingTimeout: 900000, maxPayload });
}

/**
 * A Socket.IO event packet from the client: `42` or `42<ack id>`, then a
 * JSON array. Returns `{ack, event, args}`, or null for anything else.
 */
export function eventPacket(text) {
  const m = /^42(\d*)(\[[\s\S]*\])$/.exec(text);
  if (m === null) return null;
  let array;
  try {
    array = JSON.parse(m[2]);
  } catch {
    return null;
  }
  if (!Array.isArray(array) || typeof array[0] !== "string") return null;
  return { ack: m[1], event: array[0], args: array.slice(1) };
}

/** The packet of one `msg` event carrying `data`. */
export function msgPacket(data) {
  return '42["msg",' + JSON.stringify(data) + "]";
}

// tidings.js: the browser client of the tidings hub. A plain ES module with
// no dependencies; it speaks the protocol of docs/protocol.md, and
// docs/hub.md documents its API.
//
//   import { Hub } from "/tidings.js";
//   const hub = new Hub();
//   const sub = hub.subscribe("chat:lobby", { onPublication: (pub) => show(pub.data) });
//   hub.connect();
//   await hub.publish("chat:lobby", { name: "ada", text: "hi" });
//
// Where a WebSocket cannot open (a proxy that breaks the Upgrade), it falls
// back to Server-Sent Events, then to long-polling, with commands sent as
// POST requests; the application's code does not change, and it goes back
// to WebSocket as soon as one opens.
//
// tidings.d.ts, beside this file, declares its types for TypeScript.

// After these, reconnecting cannot help: malformed commands, a refused token,
// a disconnect through the HTTP API, a message over the hub's size limit.
const FINAL_CLOSE_CODES = new Set([1009, 4000, 4001, 4003]);
const CLOSE_RATE_LIMITED = 4008;
const CLOSE_TOKEN = 4001;
// After error 503 to connect (the application could not answer), the hub
// closes with 1013, "try again later".
const CLOSE_TRY_AGAIN = 1013;
const WS_OPEN = 1;
const WS_CLOSED = 3;

/** An error from the hub or from the connection. `code` is the hub's error
 * code (403, 404, 429...), the close code that ended the connection for
 * good, or one of "timeout", "disconnected", "closed", "recovery". */
export class HubError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "HubError";
    this.code = code;
  }
}

function defaultUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

function absoluteUrl(url) {
  if (/^wss?:/i.test(url)) return url;
  const resolved = new URL(url, location.href); // "/ws", "http://host/ws"...
  resolved.protocol = resolved.protocol === "https:" ? "wss:" : "ws:";
  return resolved.href;
}

/** A connection to a hub that reconnects by itself and resubscribes, with
 * recovery, every subscription. */
export class Hub {
  /**
   * @param {string} [url] the hub's WebSocket endpoint; default ws(s)://<this host>/ws
   * @param {object} [options]
   * @param {string} [options.token] a JWT for the connect command
   * @param {*} [options.data] any JSON value sent with every connect, for
   *   the application's connect hook (a hub that asks the application)
   * @param {() => (string|null|Promise<string|null>)} [options.getToken]
   *   called before every (re)connect for a fresh token, and three quarters
   *   into each token's lifetime for the one that replaces it (sent with
   *   `refresh`, so the connection outlives its tokens); wins over `token`
   * @param {number} [options.timeout=10000] ms before a command fails with "timeout"
   * @param {number} [options.minDelay=500] first reconnect delay, ms (doubles)
   * @param {number} [options.maxDelay=20000] longest reconnect delay, ms
   * @param {number} [options.pingInterval=25000] ms between pings that
   *   detect a connection gone silent (one unanswered for `timeout` drops it)
   * @param {string[]} [options.transports=["websocket", "sse", "poll"]] what
   *   to try, in order: each one that cannot connect hands over to the next
   * @param {number} [options.probeInterval=30000] ms between attempts to go
   *   back to WebSocket while connected over a fallback
   */
  constructor(url, options = {}) {
    if (url !== null && typeof url === "object") [url, options] = [undefined, url];
    this.url = absoluteUrl(url ?? defaultUrl());
    this.options = {
      timeout: 10000,
      minDelay: 500,
      maxDelay: 20000,
      pingInterval: 25000,
      transports: ["websocket", "sse", "poll"],
      probeInterval: 30000,
      ...options,
    };
    /** "idle", "connecting", "connected", "reconnecting" or "closed". */
    this.state = "idle";
    /** The connection id and user id the hub gave (new on every connect). */
    this.client = "";
    this.user = "";
    /** What the application's connect hook answered (null without one):
     * `info`, what presence, joins, leaves and our publications show for
     * us, and `data`, its reply to `options.data`. */
    this.info = null;
    this.data = null;
    /** The transport in use: "websocket", "sse" or "poll" (null until connected). */
    this.transport = null;
    this._transportIndex = 0; // into options.transports: the one to try next
    this._ws = null; // a WebSocket, or a FallbackSocket that acts like one
    this._nextId = 1;
    this._inFlight = new Map(); // id -> command, sent on this._ws
    this._queue = []; // commands waiting for a connection
    this._subs = new Map(); // channel -> Subscription
    this._listeners = {
      connect: new Set(),
      disconnect: new Set(),
      error: new Set(),
      subscribe: new Set(),
    };
    this._announced = new Set(); // channels the hub subscribed us to on this connection
    this._attempt = 0;
    this._retryTimer = null;
    this._openTimer = null;
    this._pingTimer = null;
    this._refreshTimer = null;
    this._probeTimer = null;
    this._waiters = []; // connect() promises: [resolve, reject]
    this._everConnected = false;
    this._stopped = false; // by close() or a final close code
    this._refused = null; // the 401 answer to connect, until the close
    if (typeof window !== "undefined") {
      // The network is back: don't wait out the backoff.
      window.addEventListener("online", () => {
        if (this.state === "reconnecting" && this._retryTimer !== null) this._open();
      });
      // A connection over a network that is gone would linger until the
      // hub's keepalive notices; start over at once instead.
      window.addEventListener("offline", () => {
        if (this._ws !== null) this._lost(this._ws, 1006, "the browser went offline");
      });
    }
  }

  /** Listen to "connect" ({client, user, info, data}), "disconnect"
   * ({code, reason, reconnect, delay}), "error" (a HubError) or "subscribe"
   * (a Subscription the hub made: the token's `subs` or the application's
   * connect hook named its channel, or the application called
   * /api/subscribe; set its handlers there, before its first publication).
   * Returns a function that stops listening. */
  on(event, fn) {
    const listeners = this._listeners[event];
    if (listeners === undefined) throw new Error(`unknown event ${event}`);
    listeners.add(fn);
    return () => listeners.delete(fn);
  }

  /** Connect, and keep reconnecting until close(). Resolves with the
   * connect reply ({client, user}, and info and data when the application
   * gave them) once connected; rejects if the hub refuses for good. */
  connect() {
    const promise = new Promise((resolve, reject) => {
      if (this.state === "connected") resolve(this._identity());
      else this._waiters.push([resolve, reject]);
    });
    promise.catch(() => {}); // the "error" event reports it too
    if (this.state === "idle" || this.state === "closed") {
      this._stopped = false;
      this._attempt = 0;
      this._open();
    }
    return promise;
  }

  /** Close the connection and stop reconnecting. Subscriptions are kept:
   * connect() again resumes them, recovering what was missed. */
  close() {
    this._stop(new HubError("closed", "closed by the application"));
    if (this._ws !== null) this._lost(this._ws, 1000, "closed by the application");
  }

  /** Subscribe to `channel`; returns a Subscription at once. The subscribe
   * command goes out as soon as the hub is connected. With
   * `handlers.getToken` (a function returning a channel token, or a
   * Promise of one), every subscribe of it, resubscribes included, carries
   * a fresh channel token, and three quarters into each one's `ttl` the
   * next one goes out with `sub_refresh`. */
  subscribe(channel, handlers = {}) {
    if (this._subs.has(channel)) {
      throw new HubError(409, `already subscribed to ${channel}`);
    }
    const sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this.state === "connected") sub._send();
    return sub;
  }

  /** Publish `data` (any JSON value) to `channel`. Resolves with
   * {offset, epoch}; rejects with a HubError. With `idempotencyKey` (1-64
   * characters), a publish sent again with it (after a 503, 504 or a
   * timeout) is made once: the hub answers the first one's position. */
  publish(channel, data, { idempotencyKey } = {}) {
    const fields = { channel, data };
    if (idempotencyKey !== undefined) fields.idempotency_key = idempotencyKey;
    return this._call("publish", fields);
  }

  /** Call `method` of the application (the hub's rpc hook) with `data`
   * (any JSON value). Resolves with the data of its answer; rejects with a
   * HubError: 404 where the hub has no rpc hook, 503 when the application
   * could not answer, or the application's own error. */
  rpc(method, data) {
    return this._call("rpc", { method, data }).then((result) => result.data);
  }

  /** The subscriptions by channel, the page's and the hub's (a copy). */
  get subscriptions() {
    return new Map(this._subs);
  }

  _identity() {
    return { client: this.client, user: this.user, info: this.info, data: this.data };
  }

  // -- commands ----------------------------------------------------------

  // A command the application waits for: a Promise, failing after the
  // timeout, which includes waiting for a connection.
  _call(op, fields) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") {
        reject(new HubError("closed", "the hub connection is closed"));
        return;
      }
      const command = {
        op,
        fields,
        reply: (result, error) => {
          clearTimeout(command.timer);
          if (error) reject(error);
          else resolve(result);
        },
      };
      command.timer = setTimeout(() => {
        this._forget(command);
        reject(new HubError("timeout", `no answer to ${op} in ${this.options.timeout} ms`));
      }, this.options.timeout);
      if (this.state === "connected") this._transmit(this._ws, command);
      else this._queue.push(command);
    });
  }

  _transmit(ws, command) {
    command.id = this._nextId++;
    this._inFlight.set(command.id, command);
    ws.send(JSON.stringify({ id: command.id, op: command.op, ...command.fields }));
  }

  _forget(command) {
    this._inFlight.delete(command.id);
    const queued = this._queue.indexOf(command);
    if (queued >= 0) this._queue.splice(queued, 1);
  }

  _emit(event, value) {
    for (const fn of [...this._listeners[event]]) {
      try {
        fn(value);
      } catch (error) {
        console.error(`tidings: a "${event}" listener failed`, error);
      }
    }
  }

  // -- the connection ------------------------------------------------------

  async _open() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.state = this._everConnected ? "reconnecting" : "connecting";
    let token = this.options.token;
    if (this.options.getToken) {
      try {
        token = await this.options.getToken();
      } catch (error) {
        this._emit("error", error);
        this._retry(null, "getToken failed");
        return;
      }
      if (this._stopped) return;
    }
    let ws;
    const transports = this.options.transports;
    const kind = transports[this._transportIndex % transports.length];
    try {
      if (kind === "sse") ws = new EventSocket(httpBase(this.url));
      else if (kind === "poll") ws = new PollSocket(httpBase(this.url));
      else ws = new WebSocket(this.url);
      ws.tidingsTransport = kind;
    } catch (error) {
      // An invalid URL, or ws: from an https: page: retrying cannot help.
      this._stop(error);
      this._emit("error", error);
      return;
    }
    this._ws = ws;
    // A handshake or connect reply that never comes counts as a drop.
    this._openTimer = setTimeout(
      () => this._lost(ws, 1006, "no connection within the timeout"),
      this.options.timeout,
    );
    ws.onopen = () => {
      const connect = { op: "connect", fields: this._connectFields(token) };
      connect.reply = (result, error) => this._connected(ws, result, error);
      this._transmit(ws, connect);
    };
    ws.onmessage = (event) => this._message(ws, event.data);
    ws.onclose = (event) => this._lost(ws, event.code, event.reason);
  }

  // The connect command's fields: `options.data`, the token, and every
  // subscription's position, from which the hub recovers those it
  // subscribes us to (the token's `subs`, the channels its connect hook
  // names).
  _connectFields(token) {
    const fields = {};
    if (this.options.data !== undefined) fields.data = this.options.data;
    if (token) fields.token = token;
    const subs = {};
    for (const sub of this._subs.values()) {
      if (sub.epoch !== null) subs[sub.channel] = { offset: sub.offset, epoch: sub.epoch };
    }
    if (Object.keys(subs).length > 0) fields.subs = subs;
    return fields;
  }

  _connected(ws, result, error) {
    if (error?.code === "disconnected") return; // _lost() handles it
    // The hub answered: this transport works, and a retry stays on it.
    ws.tidingsAnswered = true;
    if (error) {
      if (error.code === 401) this._refused = error; // final
      else this._emit("error", error);
      // End it now, as the hub does (4001 after a refused token; 1013 when
      // the application could not answer, to try again later), or would
      // not (after an application's refusal), on every transport alike.
      const code = error.code === 401 ? CLOSE_TOKEN : error.code === 503 ? CLOSE_TRY_AGAIN : 1000;
      this._lost(ws, code, error.message);
      return;
    }
    clearTimeout(this._openTimer);
    this.client = result.client;
    this.user = result.user;
    this.info = result.info ?? null;
    this.data = result.data ?? null;
    this.transport = ws.tidingsTransport;
    this.state = "connected";
    this._attempt = 0;
    this._everConnected = true;
    this._heartbeat(ws);
    this._keepToken(this, ws, result.ttl, this.options.getToken, "refresh");
    if (this.transport !== "websocket") this._probe(ws);
    this._announced = new Set();
    if (this.transport === "websocket" && [...this._subs.values()].some((s) => s.serverSide)) {
      // The hub announces the subscriptions it makes before it answers the
      // next command: those it did not announce by then, it no longer
      // makes (the application stopped naming their channels). A fallback
      // answers commands apart from its stream: there they stay.
      this._transmit(ws, { op: "ping", fields: {}, reply: () => this._endUnannounced(ws) });
    }
    // Resubscribe first: whatever the application sends next is answered
    // after the subscriptions are back.
    for (const sub of this._subs.values()) if (!sub.serverSide) sub._send();
    for (const command of this._queue.splice(0)) this._transmit(ws, command);
    for (const [resolve] of this._waiters.splice(0)) resolve(result);
    this._emit("connect", this._identity());
  }

  _endUnannounced(ws) {
    if (ws !== this._ws) return;
    for (const sub of [...this._subs.values()]) {
      if (sub.serverSide && !this._announced.has(sub.channel)) sub._ended();
    }
  }

  // A subscribe push: the hub subscribed us to `channel`, as the token or
  // the application asked. `result` is as a subscribe reply's, with
  // `recovered` when a position was given (connect's subs, or the `since`
  // of /api/subscribe).
  _subscribedByHub(channel, result) {
    this._announced.add(channel);
    let sub = this._subs.get(channel);
    const made = sub === undefined;
    if (made) {
      sub = new Subscription(this, channel, {});
      this._subs.set(channel, sub);
    }
    // One of the page's that the application subscribes us to as well is
    // the hub's from now on: the hub answers the page's subscribe with 409.
    sub.serverSide = true;
    // Before anything is delivered: the page sets its handlers here.
    if (made) this._emit("subscribe", sub);
    let since = "recovered" in result;
    if (!since && sub.epoch !== null) {
      // Announced again without the position the page had (by an
      // /api/subscribe without since, say): recovered only if nothing came
      // meanwhile.
      since = true;
      const same = result.epoch === sub.epoch && result.offset === sub.offset;
      result = { ...result, recovered: same, publications: [] };
    }
    sub._subscribed(result, null, since);
  }

  _message(ws, text) {
    if (ws !== this._ws) return;
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this._emit("error", new HubError(400, "the hub sent something that is not JSON"));
      return;
    }
    if (message.id !== undefined) {
      const command = this._inFlight.get(message.id);
      if (command === undefined) return; // timed out meanwhile
      this._inFlight.delete(message.id);
      if (message.error) {
        command.reply(null, new HubError(message.error.code, message.error.message));
      } else {
        command.reply(message.result, null);
      }
    } else if (message.subscribe !== undefined) {
      this._subscribedByHub(message.channel, message.subscribe);
    } else if (message.channel !== undefined) {
      this._subs.get(message.channel)?._push(message);
    } else if (message.error) {
      this._emit("error", new HubError(message.error.code, message.error.message));
    }
  }

  // Ping now and then; a ping unanswered within the timeout means the
  // connection is dead even if the browser has not noticed yet.
  _heartbeat(ws) {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      const timer = setTimeout(
        () => this._lost(ws, 1006, "the hub did not answer a ping"),
        this.options.timeout,
      );
      this._transmit(ws, { op: "ping", fields: {}, reply: () => clearTimeout(timer) });
    }, this.options.pingInterval);
  }

  // While on a fallback, try a WebSocket now and then; once one opens, start
  // over on it (the subscriptions recover what the switch costs).
  _probe(ws) {
    clearInterval(this._probeTimer);
    if (!this.options.transports.includes("websocket")) return;
    this._probeTimer = setInterval(() => {
      let probe;
      try {
        probe = new WebSocket(this.url);
      } catch {
        return;
      }
      probe.onopen = () => {
        probe.close(1000);
        if (ws !== this._ws) return;
        this._transportIndex = this.options.transports.indexOf("websocket");
        this._attempt = 0;
        this._lost(ws, 1000, "WebSocket is back");
      };
    }, this.options.probeInterval);
  }

  // Three quarters into a token's `ttl` (seconds from now) on `ws`, get the
  // next one from `getToken` and send it with `op` (refresh; sub_refresh
  // with the channel in `fields`), and so on. `owner`, the Hub or a
  // Subscription, keeps the timer. One that fails is reported and left: the
  // hub ends the connection (4002) or the subscription (an unsubscribe
  // push) when the token expires, and the reconnect or the next subscribe
  // asks getToken again.
  _keepToken(owner, ws, ttl, getToken, op, fields = {}) {
    clearTimeout(owner._refreshTimer);
    if (ttl === undefined || !getToken) return;
    owner._refreshTimer = setTimeout(async () => {
      try {
        const token = await getToken();
        if (ws !== this._ws || owner.active === false) return; // gone meanwhile
        const result = await this._call(op, { ...fields, token });
        this._keepToken(owner, ws, result.ttl, getToken, op, fields);
      } catch (error) {
        if (ws === this._ws) this._emit("error", error);
      }
    }, ttl * 750);
  }

  // The connection `ws` is gone: closed by the hub or the network, timed
  // out, or abandoned by us (then closed here, its events ignored).
  _lost(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._openTimer);
    clearInterval(this._pingTimer);
    clearTimeout(this._refreshTimer);
    for (const sub of this._subs.values()) clearTimeout(sub._refreshTimer);
    clearInterval(this._probeTimer);
    // A transport that never reached the hub hands over to the next one.
    if (this.state !== "connected" && !ws.tidingsAnswered) this._transportIndex += 1;
    if (ws.readyState !== WS_CLOSED) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      ws.close(1000);
    }
    const inFlight = [...this._inFlight.values()];
    this._inFlight.clear();
    const gone = new HubError("disconnected", `the connection closed (${code})`);
    for (const command of inFlight) command.reply(null, gone);
    if (this._stopped) {
      this._emit("disconnect", { code, reason, reconnect: false, delay: null });
    } else if (FINAL_CLOSE_CODES.has(code) || this._refused) {
      const error = this._refused ?? new HubError(code, reason || `closed with ${code}`);
      this._stop(error);
      this._emit("disconnect", { code, reason, reconnect: false, delay: null });
      this._emit("error", error);
    } else {
      this._retry(code, reason);
    }
  }

  _retry(code, reason) {
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s... up to 20 s, each
    // randomly shortened by up to half so that clients don't return in step.
    const { minDelay, maxDelay } = this.options;
    let delay = Math.min(maxDelay, minDelay * 2 ** this._attempt);
    delay *= 0.5 + Math.random() * 0.5;
    if (code === CLOSE_RATE_LIMITED) delay = Math.max(delay, maxDelay / 4); // slow down
    this._attempt += 1;
    this.state = "reconnecting";
    this._retryTimer = setTimeout(() => this._open(), delay);
    this._emit("disconnect", { code, reason, reconnect: true, delay });
  }

  _stop(error) {
    this._stopped = true;
    this._refused = null;
    this.state = "closed";
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    for (const command of this._queue.splice(0)) command.reply(null, error);
    for (const [, reject] of this._waiters.splice(0)) reject(error);
  }
}

/** A subscription to one channel: publications in offset order, each once,
 * across reconnects. `offset` and `epoch` are the channel's position as
 * last seen (null before the first subscribe reply). `handlers` may be
 * replaced or changed at any time. */
export class Subscription {
  constructor(hub, channel, handlers) {
    this.hub = hub;
    this.channel = channel;
    this.handlers = handlers;
    /** Made by the hub (the token's `subs` or the application named the
     * channel), not by hub.subscribe(): the hub renews it on every
     * reconnect while the token or the application names the channel. */
    this.serverSide = false;
    this.offset = handlers.since ? handlers.since.offset : null;
    this.epoch = handlers.since ? handlers.since.epoch : null;
    /** False after unsubscribe(), an error reply to subscribe, or the hub
     * unsubscribing the client. */
    this.active = true;
    // True from a subscribe command until its reply: the pushes in between
    // are covered by the reply.
    this._resyncing = false;
    this._refreshTimer = null; // sends the next channel token (getToken)
  }

  /** Stop receiving. Resolves when the hub confirmed (at once if offline). */
  unsubscribe() {
    const hub = this.hub;
    if (hub._subs.get(this.channel) !== this) return Promise.resolve();
    hub._subs.delete(this.channel);
    this.active = false;
    clearTimeout(this._refreshTimer);
    if (hub.state !== "connected") return Promise.resolve();
    return hub._call("unsubscribe", { channel: this.channel }).then(
      () => undefined,
      (error) => {
        if (error.code !== 409 && error.code !== "disconnected") throw error;
      },
    );
  }

  /** Who is subscribed: a Promise of [{client, user, info?}, ...]. */
  presence() {
    return this.hub._call("presence", { channel: this.channel }).then((r) => r.clients);
  }

  /** How many are subscribed on the whole hub, without listing them: a
   * Promise of {clients, users}; cheap enough to poll on any channel. */
  presenceStats() {
    return this.hub._call("presence_stats", { channel: this.channel });
  }

  /** Kept publications: a Promise of {epoch, offset, publications}. With
   * `limit`, the newest `limit`; with `since` ({offset, epoch}), those
   * after it, or `complete: false` and none if history no longer reaches. */
  history({ limit, since } = {}) {
    const fields = { channel: this.channel };
    if (limit !== undefined) fields.limit = limit;
    if (since !== undefined) fields.since = since;
    return this.hub._call("history", fields);
  }

  _call(name, value) {
    const fn = this.handlers[name];
    if (fn === undefined) return false;
    const failed = (error) => console.error(`tidings: ${name} for ${this.channel} failed`, error);
    try {
      const result = fn(value);
      if (typeof result?.then === "function") result.then(undefined, failed);
    } catch (error) {
      failed(error);
    }
    return true;
  }

  _send() {
    this._resyncing = true;
    clearTimeout(this._refreshTimer);
    const hub = this.hub;
    const ws = hub._ws;
    const getToken = this.handlers.getToken;
    if (!getToken) {
      this._sendOn(ws, null);
      return;
    }
    Promise.resolve()
      .then(getToken)
      .then(
        (token) => {
          if (hub._ws === ws && hub._subs.get(this.channel) === this) this._sendOn(ws, token);
        },
        // No token: the subscription ends with the error.
        (error) => this._subscribed(null, error instanceof Error ? error : new Error(error), false),
      );
  }

  _sendOn(ws, token) {
    const fields = { channel: this.channel };
    const since = this.epoch !== null;
    if (since) fields.since = { offset: this.offset, epoch: this.epoch };
    if (token) fields.token = token;
    const command = { op: "subscribe", fields };
    command.reply = (result, error) => {
      // Once the hub subscribed us itself, it answers this one with 409.
      if (this.serverSide) return;
      this._subscribed(result, error, since);
      if (!error && this.active) {
        const { channel } = this;
        const getToken = this.handlers.getToken;
        this.hub._keepToken(this, ws, result.ttl, getToken, "sub_refresh", { channel });
      }
    };
    this.hub._transmit(ws, command);
  }

  _subscribed(result, error, since) {
    const hub = this.hub;
    if (hub._subs.get(this.channel) !== this) return; // unsubscribed meanwhile
    this._resyncing = false;
    if (error) {
      if (error.code === "disconnected") return; // sent again on reconnect
      hub._subs.delete(this.channel);
      this.active = false;
      error.channel = this.channel;
      if (!this._call("onError", error)) hub._emit("error", error);
      return;
    }
    const recovered = since ? Boolean(result.recovered) : null;
    const missed = recovered ? result.publications.length : 0;
    if (recovered) {
      for (const pub of result.publications) this._publication(pub, true);
    }
    const position = { offset: result.offset, epoch: result.epoch };
    this.offset = result.offset;
    this.epoch = result.epoch;
    if (recovered === false) {
      // Publications were missed and are gone: the application must reload
      // its state. Never skip silently.
      if (!this._call("onRecoveryFailed", position)) {
        const failed = new HubError("recovery", `missed publications on ${this.channel}`);
        failed.channel = this.channel;
        hub._emit("error", failed);
      }
    }
    this._call("onSubscribe", { ...position, recovered, missed });
  }

  _publication(pub, recovered = false) {
    if (this.offset !== null && pub.offset <= this.offset) return; // seen
    this.offset = pub.offset;
    this._call("onPublication", recovered ? { ...pub, recovered } : pub);
  }

  // Every live publication carries its position: one that skips an offset,
  // or comes from another epoch, means publications were missed (a node of
  // the hub lost its broker for a while, say). Subscribe again with since:
  // the reply recovers them, or says they are lost. Never a silent gap.
  _live(pub) {
    if (this._resyncing) return;
    if (pub.epoch === this.epoch && pub.offset <= this.offset) return; // seen
    if (pub.epoch !== this.epoch || pub.offset !== this.offset + 1) this._resync();
    else this._publication(pub);
  }

  _resync() {
    const hub = this.hub;
    if (this.serverSide) {
      // Only the hub may subscribe where the application subscribed us (a
      // subscribe of the page's may be refused there), and it recovers such
      // a subscription from the connect command's subs: start over.
      this._resyncing = true; // what follows the gap waits for that
      if (hub._ws !== null) {
        hub._lost(hub._ws, 1000, `missed publications on ${this.channel}: reconnecting`);
      }
      return;
    }
    if (hub.state !== "connected") return; // the reconnect resubscribes
    hub._transmit(hub._ws, {
      op: "unsubscribe",
      fields: { channel: this.channel },
      reply: () => {},
    });
    this._send();
  }

  // The hub ended the subscription.
  _ended() {
    if (this.hub._subs.get(this.channel) === this) this.hub._subs.delete(this.channel);
    this.active = false;
    clearTimeout(this._refreshTimer);
    this._call("onUnsubscribe", {});
  }

  _push(message) {
    if (message.pub !== undefined) this._live(message.pub);
    else if (message.position !== undefined) {
      const { offset, epoch } = message.position;
      if (!this._resyncing && (epoch !== this.epoch || offset > this.offset)) this._resync();
    } else if (message.unsubscribe !== undefined) {
      this._ended(); // the hub unsubscribed us (/api/unsubscribe, a channel token expired)
    } else if (message.join !== undefined) this._call("onJoin", message.join);
    else if (message.leave !== undefined) this._call("onLeave", message.leave);
  }
}

// -- fallbacks: what the Hub needs of a WebSocket, over plain HTTP ------------

// The hub's HTTP address beside its WebSocket endpoint: ws://host/ws -> http://host.
function httpBase(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/ws$/, "");
  url.search = "";
  return url.href.replace(/\/$/, "");
}

// Commands go out as POST /command, answered with their replies; replies
// and pushes come back as `onmessage({data})`, as from a WebSocket. A
// failure of the network or a refusal ends it with `onclose({code, reason})`.
// Every request carries `session=`, a secret of this connection: the hub
// derives the client id from it, so that requests to any node act as one
// client.
class FallbackSocket {
  constructor(base) {
    this.base = base;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = null;
    this._token = null;
    this._channelTokens = new Map(); // channel -> its channel token, if any
    const bytes = crypto.getRandomValues(new Uint8Array(18));
    this._session = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
    this._requests = new Set(); // AbortControllers of the requests under way
    setTimeout(() => {
      if (this.readyState !== 0) return;
      this.readyState = WS_OPEN;
      this.onopen?.();
    }, 0);
  }

  send(text) {
    const command = JSON.parse(text);
    if (command.op === "connect") {
      this._token = command.token ?? null;
      this._connect(command);
    } else if (command.op === "subscribe") {
      if (command.token) this._channelTokens.set(command.channel, command.token);
      else this._channelTokens.delete(command.channel);
      this._subscribe(command);
    } else if (command.op === "unsubscribe") {
      this._channelTokens.delete(command.channel);
      this._unsubscribe(command);
    } else if (command.op === "refresh") this._refresh(command);
    else if (command.op === "sub_refresh") this._subRefresh(command);
    else this._post(command).then((reply) => this._deliver(reply));
  }

  close() {
    this.readyState = WS_CLOSED;
    for (const request of this._requests) request.abort();
    this._requests.clear();
  }

  _fail(code, reason) {
    if (this.readyState === WS_CLOSED) return;
    this.close();
    this.onclose?.({ code, reason });
  }

  _deliver(message) {
    if (message && this.readyState === WS_OPEN) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
  }

  // `path` is "/command", "/sse" or "/poll"; `params` a URLSearchParams.
  // Aborted by close() until the answer's head has come, or by `request`.
  async _fetch(path, params, init = {}, request = new AbortController()) {
    this._requests.add(request);
    const headers = { ...init.headers };
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    params.set("session", this._session);
    try {
      return await fetch(`${this.base}${path}?${params}`, {
        ...init,
        headers,
        signal: request.signal,
        cache: "no-store",
        // The cookies go along, as with a WebSocket: a connect hook knows
        // the user by them on every transport.
        credentials: "include",
      });
    } finally {
      this._requests.delete(request);
    }
  }

  // `command` as POST /command: its reply, or null once the connection failed.
  async _post(command) {
    try {
      const response = await this._fetch("/command", new URLSearchParams(), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(command),
      });
      const reply = await response.json();
      return reply.id === undefined ? { ...reply, id: command.id } : reply;
    } catch (error) {
      this._fail(1006, `${this.base}/command failed: ${error.message}`);
      return null;
    }
  }

  async _refresh(command) {
    const reply = await this._post(command);
    if (reply && !reply.error) {
      this._token = command.token;
      this._renewed();
    }
    this._deliver(reply);
  }

  _renewed() {}

  // A stream's subscription lives on one node: POST /command finds it there.
  async _subRefresh(command) {
    const reply = await this._post(command);
    if (reply && !reply.error) this._channelTokens.set(command.channel, command.token);
    this._deliver(reply);
  }
}

// Server-Sent Events: one stream for every channel, reopened (from the
// positions it reached) when the channels change or the token does.
class EventSocket extends FallbackSocket {
  constructor(base) {
    super(base);
    this._channels = new Map(); // channel -> {offset, epoch} or null
    // The server-side subscriptions' positions: channel -> {offset, epoch},
    // from which every stream's connect recovers them.
    this._subs = new Map();
    this._waiting = new Map(); // channel -> id of the subscribe to answer
    this._connectId = null; // the connect to answer with the next stream's
    this._stream = null; // the AbortController of the stream being read
    this._reopening = false;
  }

  _connect(command) {
    this._connectId = command.id;
    this._subs = new Map(Object.entries(command.subs ?? {}));
    this._open();
  }

  _subscribe(command) {
    this._channels.set(command.channel, command.since ?? null);
    this._waiting.set(command.channel, command.id);
    this._renewed();
  }

  _unsubscribe(command) {
    this._channels.delete(command.channel);
    this._subs.delete(command.channel);
    this._waiting.delete(command.channel);
    this._post(command).then((reply) => this._deliver(reply));
  }

  // Reopen once for everything changed in this turn of the event loop.
  _renewed() {
    if (this._reopening) return;
    this._reopening = true;
    setTimeout(() => {
      this._reopening = false;
      if (this.readyState === WS_OPEN) this._open();
    }, 0);
  }

  async _open() {
    this._stream?.abort();
    const stream = new AbortController();
    this._stream = stream;
    const channels = [...this._channels.keys()];
    const params = new URLSearchParams();
    for (const channel of channels) params.append("channel", channel);
    const positions = channels.map((channel) => this._channels.get(channel));
    if (positions.some((position) => position)) {
      for (const position of positions) {
        params.append("since", position ? String(position.offset) : "");
        params.append("epoch", position ? position.epoch : "");
      }
    }
    for (const [channel, { offset, epoch }] of this._subs) {
      if (!this._channels.has(channel)) params.append("sub", `${channel}=${offset}:${epoch}`);
    }
    if (channels.some((channel) => this._channelTokens.has(channel))) {
      for (const channel of channels) {
        params.append("channel_token", this._channelTokens.get(channel) ?? "");
      }
    }
    let response;
    try {
      response = await this._fetch(
        "/sse",
        params,
        { headers: { Accept: "text/event-stream" } },
        stream,
      );
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        this._refused(body.error ?? { code: response.status, message: "refused" });
        return;
      }
      await this._read(response.body.getReader(), channels, stream);
    } catch (error) {
      if (stream !== this._stream) return; // replaced
      this._fail(1006, `the event stream failed: ${error.message}`);
      return;
    }
    if (stream === this._stream) this._fail(1006, "the event stream ended");
  }

  _refused(error) {
    if (this._connectId !== null) {
      this._deliver({ id: this._connectId, error });
      this._connectId = null;
    }
    this._fail(error.code === 401 ? 4001 : 1006, error.message);
  }

  async _read(reader, channels, stream) {
    const decoder = new TextDecoder();
    let text = "";
    let event = {};
    while (stream === this._stream) {
      const { value, done } = await reader.read();
      if (done) return;
      text += decoder.decode(value, { stream: true });
      let end;
      while ((end = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, end).replace(/\r$/, "");
        text = text.slice(end + 1);
        if (line === "") {
          if (event.data !== undefined) this._event(event, channels);
          event = {};
          if (stream !== this._stream) return;
          continue;
        }
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a heartbeat
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        event[field] = value;
      }
    }
  }

  _event(event, channels) {
    const data = JSON.parse(event.data);
    if (event.event === "close") {
      this._fail(data.code, data.reason);
      return;
    }
    if (event.id !== undefined) {
      // The URL's channels' positions, then ";CHANNEL=OFFSET:EPOCH" of each
      // server-side subscription the stream has (all of them).
      const [head, ...subs] = event.id.split(";");
      head.split(",").forEach((part, index) => {
        const position = parsePosition(part);
        if (position && this._channels.has(channels[index])) {
          this._channels.set(channels[index], position);
        }
      });
      this._subs = new Map();
      for (const entry of subs) {
        const at = entry.lastIndexOf("=");
        const position = parsePosition(entry.slice(at + 1));
        if (at > 0 && position) this._subs.set(entry.slice(0, at), position);
      }
    }
    if (data.id === 1) {
      // The connect reply: the Hub's own, or that of a stream reopened.
      if (this._connectId !== null) this._deliver({ ...data, id: this._connectId });
      else if (data.error) this._fail(data.error.code === 401 ? 4001 : 1006, data.error.message);
      this._connectId = null;
    } else if (data.id !== undefined) {
      this._answered(channels[data.id - 2], data);
    } else {
      if (data.unsubscribe !== undefined) {
        // Ended by the hub: no stream reopened later may subscribe it again.
        this._channels.delete(data.channel);
        this._channelTokens.delete(data.channel);
      }
      this._deliver(data);
    }
  }

  // A subscribe reply of the stream: to the Hub's subscribe if one waits;
  // for a channel the Hub already had, what it says, as pushes.
  _answered(channel, reply) {
    const id = this._waiting.get(channel);
    if (id !== undefined) {
      this._waiting.delete(channel);
      // Refused: the Subscription ends, and no stream reopened later may
      // hold a subscriber's place on the channel for nobody.
      if (reply.error) this._channels.delete(channel);
      this._deliver({ ...reply, id });
      return;
    }
    const result = reply.result;
    if (result?.recovered) {
      for (const pub of result.publications) {
        this._deliver({ channel, pub: { ...pub, epoch: result.epoch } });
      }
    } else if (result?.recovered === false || reply.error) {
      // The Subscription sees a position it did not reach, and resubscribes.
      this._deliver({ channel, position: { offset: -1, epoch: "" } });
    }
  }

  close() {
    super.close();
    this._stream?.abort();
    this._stream = null;
  }
}

// "OFFSET:EPOCH" as {offset, epoch}, or null.
function parsePosition(text) {
  const colon = text.indexOf(":");
  if (colon <= 0) return null;
  return { offset: Number(text.slice(0, colon)), epoch: text.slice(colon + 1) };
}

// Long-polling: one request held per channel, each carrying its position,
// so that consecutive polls may go to different nodes of a hub.
class PollSocket extends FallbackSocket {
  constructor(base) {
    super(base);
    this._polls = new Map(); // channel -> the loop's token
  }

  _connect(command) {
    this._post(command).then((reply) => this._deliver(reply));
  }

  _subscribe(command) {
    const token = {};
    this._polls.set(command.channel, token);
    this._poll(command.channel, command.id, command.since ?? null, token);
  }

  _unsubscribe(command) {
    this._polls.delete(command.channel);
    this._deliver({ id: command.id, result: {} });
  }

  // Each poll carries its channel token: a poll at once with the new one
  // checks it (and gives its ttl), and the next polls carry it.
  async _subRefresh(command) {
    const params = new URLSearchParams({
      channel: command.channel,
      timeout: "0",
      channel_token: command.token,
    });
    let answer;
    try {
      answer = await (await this._fetch("/poll", params)).json();
    } catch (error) {
      this._fail(1006, `a poll failed: ${error.message}`);
      return;
    }
    if (answer.error) {
      this._deliver({ id: command.id, error: answer.error });
      return;
    }
    if (this._polls.has(command.channel)) {
      this._channelTokens.set(command.channel, command.token);
    }
    this._deliver({ id: command.id, result: { ttl: answer.ttl } });
  }

  async _poll(channel, id, since, token) {
    let position = since;
    let first = true;
    while (this.readyState === WS_OPEN && this._polls.get(channel) === token) {
      const params = new URLSearchParams({ channel, timeout: first ? "0" : "25" });
      if (position) {
        params.set("since", String(position.offset));
        params.set("epoch", position.epoch);
      }
      const channelToken = this._channelTokens.get(channel);
      if (channelToken) params.set("channel_token", channelToken);
      let answer;
      try {
        answer = await (await this._fetch("/poll", params)).json();
      } catch (error) {
        this._fail(1006, `a poll failed: ${error.message}`);
        return;
      }
      if (this._polls.get(channel) !== token) return;
      if (answer.error) {
        if (first) this._deliver({ id, error: answer.error });
        else if (channelToken) {
          // Its channel token expired (or was refused) unrefreshed: the
          // subscription ends, as the hub ends it on a WebSocket.
          this._polls.delete(channel);
          this._deliver({ channel, unsubscribe: {} });
        } else this._fail(answer.error.code === 401 ? 4001 : 1006, answer.error.message);
        return;
      }
      const at = { offset: answer.offset, epoch: answer.epoch };
      if (first) {
        const result = position ? answer : { ...at, ttl: answer.ttl };
        this._deliver({ id, result });
        first = false;
      } else if (answer.recovered === false) {
        this._deliver({ channel, position: at }); // the Subscription resubscribes
        return;
      } else {
        for (const pub of answer.publications) {
          this._deliver({ channel, pub: { ...pub, epoch: answer.epoch } });
        }
      }
      for (const push of answer.pushes) this._deliver(push);
      position = at;
    }
  }
}

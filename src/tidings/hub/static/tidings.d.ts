// Types of tidings.js, the browser client of the tidings hub, for
// TypeScript: keep this file beside tidings.js and import "./tidings.js" as
// usual. docs/hub.md documents the API; docs/protocol.md the wire.

/** Who a client is: its connection id, its user id ("" when anonymous) and
 * the JSON the application gave it (its token's `info` claim, or its
 * connect or subscribe hook's `info`), if any. */
export interface ClientInfo {
  client: string;
  user: string;
  info?: unknown;
}

/** A channel's position: the offset of its latest publication seen, and
 * its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** A publication. Live ones carry their `epoch`; those delivered by a
 * recovery are marked `recovered`. `info` names the client that published
 * (none through the HTTP API). */
export interface Publication<T = unknown> {
  offset: number;
  data: T;
  epoch?: string;
  info?: ClientInfo;
  recovered?: true;
}

/** What `onSubscribe` gets after every successful subscribe: `recovered`
 * is null for a fresh one, true when the `missed` publications were
 * delivered, false when they are lost. */
export interface SubscribeInfo extends Position {
  recovered: boolean | null;
  missed: number;
}

export interface SubscriptionHandlers<T = unknown> {
  onPublication?(pub: Publication<T>): unknown;
  onJoin?(info: ClientInfo): unknown;
  onLeave?(info: ClientInfo): unknown;
  onSubscribe?(info: SubscribeInfo): unknown;
  onRecoveryFailed?(position: Position): unknown;
  /** The hub refused the subscription, which has ended. */
  onError?(error: HubError): unknown;
  /** The hub ended the subscription. */
  onUnsubscribe?(): unknown;
  /** Resume from a known position on the first subscribe. */
  since?: Position;
  /** A channel token (a JWT allowing this user to subscribe to this
   * channel, whatever the connection's token says) for every subscribe of
   * the subscription, resubscribes after a reconnect included, and before
   * each one expires, for the `sub_refresh` that replaces it. */
  getToken?: () => string | Promise<string>;
}

/** How many are present on a channel: connections, and distinct users. */
export interface PresenceStats {
  clients: number;
  users: number;
}

/** A history answer; with `since`, `complete: false` and no publications
 * when history no longer reaches back. */
export interface HistoryResult<T = unknown> extends Position {
  publications: Publication<T>[];
  complete?: boolean;
}

/** The connect reply: `info` and `data` when the application's connect
 * hook gave them, `ttl` (seconds) with a token that expires. */
export interface ConnectResult {
  client: string;
  user: string;
  info?: unknown;
  data?: unknown;
  ttl?: number;
}

/** The "connect" event: `info` and `data` are null without them. */
export interface ConnectEvent {
  client: string;
  user: string;
  info: unknown;
  data: unknown;
}

/** The "disconnect" event: with `reconnect`, the next attempt is in
 * `delay` ms; without, the client has stopped. */
export interface DisconnectEvent {
  code: number;
  reason: string;
  reconnect: boolean;
  delay: number | null;
}

export interface HubEvents {
  connect: ConnectEvent;
  disconnect: DisconnectEvent;
  error: HubError;
  /** A subscription the hub made (the token's `subs` or the application's
   * connect hook named its channel, or the application called
   * /api/subscribe), before any of its publications: set its handlers
   * here. */
  subscribe: Subscription;
}

export type Transport = "websocket" | "sse" | "poll";

export type HubState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface HubOptions {
  /** A JWT for the connect command. */
  token?: string;
  /** Any JSON value sent with every connect, for the application's
   * connect hook. */
  data?: unknown;
  /** A fresh token before every connect, and before each one expires;
   * wins over `token`. */
  getToken?: () => string | null | Promise<string | null>;
  /** ms before a command fails with "timeout" (10000). */
  timeout?: number;
  /** Reconnect backoff bounds, ms (500, 20000). */
  minDelay?: number;
  maxDelay?: number;
  /** ms between pings that detect a dead connection (25000). */
  pingInterval?: number;
  /** What to try, in order (["websocket", "sse", "poll"]). */
  transports?: Transport[];
  /** ms between attempts to go back to WebSocket from a fallback (30000). */
  probeInterval?: number;
}

/** An error from the hub or the connection: the hub's error code (403,
 * 404, 503...), the close code that stopped the client, or one of
 * "timeout", "disconnected", "closed", "recovery". */
export class HubError extends Error {
  constructor(code: number | string, message: string);
  code: number | "timeout" | "disconnected" | "closed" | "recovery";
  /** The subscription's channel, for its errors. */
  channel?: string;
}

/** A connection to a hub that reconnects by itself and resubscribes, with
 * recovery, every subscription. */
export class Hub {
  constructor(url?: string | null, options?: HubOptions);
  constructor(options: HubOptions);
  readonly url: string;
  options: HubOptions;
  state: HubState;
  /** The connection id and user id the hub gave (new on every connect). */
  client: string;
  user: string;
  /** The application's connect answer: `info` and `data` (null without). */
  info: unknown;
  data: unknown;
  transport: Transport | null;
  /** The subscriptions by channel, the page's and the hub's (a copy). */
  readonly subscriptions: Map<string, Subscription>;
  on<E extends keyof HubEvents>(event: E, fn: (value: HubEvents[E]) => unknown): () => void;
  connect(): Promise<ConnectResult>;
  close(): void;
  subscribe<T = unknown>(channel: string, handlers?: SubscriptionHandlers<T>): Subscription<T>;
  /** With `idempotencyKey`, a publish sent again is made once. */
  publish(
    channel: string,
    data: unknown,
    options?: { idempotencyKey?: string },
  ): Promise<Position>;
  /** The application's answer to `method` (its rpc hook). */
  rpc<T = unknown>(method: string, data?: unknown): Promise<T>;
}

/** A subscription to one channel: publications in offset order, each
 * once, across reconnects. */
export class Subscription<T = unknown> {
  private constructor();
  readonly hub: Hub;
  readonly channel: string;
  /** May be replaced or changed at any time. */
  handlers: SubscriptionHandlers<T>;
  /** Made by the hub (a server-side subscription), not by hub.subscribe(). */
  serverSide: boolean;
  offset: number | null;
  epoch: string | null;
  active: boolean;
  unsubscribe(): Promise<void>;
  presence(): Promise<ClientInfo[]>;
  /** How many clients, and distinct users, are subscribed on the whole hub. */
  presenceStats(): Promise<PresenceStats>;
  history(options?: { limit?: number; since?: Position }): Promise<HistoryResult<T>>;
}

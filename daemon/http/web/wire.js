// salon/1 over WebTransport: the control stream (varint-framed JSON) and media datagrams.
// Everything the server sends is treated as untrusted data: parsed as JSON, never evaluated,
// and inserted into the page only as text by the caller.

export const PROTOCOL_VERSION = "salon/1";
const MAX_MESSAGE_SIZE = 65536;
const PING_AFTER_MS = 10000;

export function encodeVarint(value) {
  if (value < 0x40) return Uint8Array.of(value);
  if (value < 0x4000) return Uint8Array.of(0x40 | (value >> 8), value & 0xff);
  if (value < 0x40000000) {
    return Uint8Array.of(0x80 | (value >>> 24), (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
  }
  throw new RangeError("varint too large for this client");
}

// Returns [value, bytesRead], or null when `bytes` holds only part of the varint.
export function decodeVarint(bytes, offset = 0) {
  if (offset >= bytes.length) return null;
  const size = 1 << (bytes[offset] >> 6);
  if (offset + size > bytes.length) return null;
  let value = bytes[offset] & 0x3f;
  for (let i = 1; i < size; i++) value = value * 256 + bytes[offset + i];
  return [value, size];
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// One WebTransport session speaking salon/1.
export class Connection {
  constructor() {
    this.transport = null;
    this.writer = null;
    this.datagramWriter = null;
    this.nextId = 1;
    this.pending = new Map();
    this.onEvent = () => {};
    this.onDatagram = () => {};
    this.onClose = () => {};
    this.closed = false;
    this.maxDatagram = 1100;
    this._pingTimer = null;
    this._lastSent = 0;
  }

  async open(url, certificateHashes) {
    const options = {};
    if (certificateHashes.length) {
      options.serverCertificateHashes = certificateHashes.map((value) => ({ algorithm: "sha-256", value }));
    }
    this.transport = new WebTransport(url, options);
    await this.transport.ready;
    this.transport.closed.then(
      () => this._closed("connection closed"),
      (error) => this._closed(String(error && error.message || error)),
    );
    const stream = await this.transport.createBidirectionalStream();
    this.writer = stream.writable.getWriter();
    this.datagramWriter = this.transport.datagrams.createWritable
      ? this.transport.datagrams.createWritable().getWriter() // Safari
      : this.transport.datagrams.writable.getWriter();
    this._readControl(stream.readable.getReader());
    this._readDatagrams(this.transport.datagrams.readable.getReader());
    this._pingTimer = setInterval(() => {
      if (Date.now() - this._lastSent >= PING_AFTER_MS) this.request("ping").catch(() => {});
    }, 2000);
  }

  close() {
    if (this.transport && !this.closed) {
      try { this.transport.close({ closeCode: 0, reason: "bye" }); } catch (_) { /* already closing */ }
    }
    this._closed("closed by the page");
  }

  _closed(reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this._pingTimer);
    for (const { reject } of this.pending.values()) reject(new ProtocolError("disconnected", reason));
    this.pending.clear();
    this.onClose(reason);
  }

  request(type, fields = {}) {
    if (this.closed) return Promise.reject(new ProtocolError("disconnected", "not connected"));
    const id = this.nextId++;
    const body = new TextEncoder().encode(JSON.stringify({ ...fields, type, id }));
    this._lastSent = Date.now();
    const sent = this.writer.write(concat(encodeVarint(body.length), body));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      sent.catch((error) => {
        this.pending.delete(id);
        reject(new ProtocolError("disconnected", String(error)));
      });
    });
  }

  sendDatagram(bytes) {
    if (this.closed || bytes.length > this.maxDatagram) return;
    this.datagramWriter.write(bytes).catch(() => {});
  }

  async _readControl(reader) {
    let buffer = new Uint8Array(0);
    const decoder = new TextDecoder("utf-8", { fatal: true });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = concat(buffer, value);
        for (;;) {
          const prefix = decodeVarint(buffer);
          if (prefix === null) break;
          const [length, size] = prefix;
          if (length > MAX_MESSAGE_SIZE) throw new Error("control message too large");
          if (buffer.length < size + length) break;
          const text = decoder.decode(buffer.subarray(size, size + length));
          buffer = buffer.slice(size + length);
          this._dispatch(JSON.parse(text));
        }
      }
    } catch (error) {
      console.warn("control stream:", error);
    }
    this.close();
  }

  _dispatch(message) {
    if (message === null || typeof message !== "object" || typeof message.type !== "string") return;
    if (message.type === "ok" || message.type === "error") {
      const waiter = this.pending.get(message.re);
      if (!waiter) return;
      this.pending.delete(message.re);
      if (message.type === "ok") waiter.resolve(message.result || {});
      else waiter.reject(new ProtocolError(String(message.code), String(message.message)));
      return;
    }
    try {
      this.onEvent(message);
    } catch (error) {
      console.error("event handler failed", message.type, error);
    }
  }

  async _readDatagrams(reader) {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.onDatagram(value);
      }
    } catch (_) {
      // the session closed; _closed reports it
    }
  }
}

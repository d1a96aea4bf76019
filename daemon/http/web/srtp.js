// SRTP with AEAD_AES_128_GCM (RFC 7714) on WebCrypto, as PROTOCOL.md 11.3 and libsrtp do it:
// session key and salt from the master key and salt with the SRTP KDF (RFC 3711 4.3, AES-CM,
// the 12-byte master salt left-aligned in the 14-byte KDF salt), IV = session salt XOR
// (00 00 || SSRC || ROC || SEQ), AAD = the clear RTP header (extension included), 16-byte tag.

const TAG_LENGTH = 16;
const LABEL_ENCRYPTION = 0x00;
const LABEL_SALT = 0x02;
const REPLAY_WINDOW = 64;

export function base64ToBytes(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function bytesToBase64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

async function kdf(masterKey, masterSalt, label, length) {
  const key = await crypto.subtle.importKey("raw", masterKey, "AES-CTR", false, ["encrypt"]);
  const counter = new Uint8Array(16);
  counter.set(masterSalt.subarray(0, 12), 0);
  counter[7] ^= label;
  const stream = await crypto.subtle.encrypt(
    { name: "AES-CTR", counter, length: 16 }, key, new Uint8Array(length),
  );
  return new Uint8Array(stream);
}

// The 28 bytes of a MediaKey (base64 in `key`) -> {key: CryptoKey, salt: Uint8Array(12)}.
export async function deriveSession(material) {
  if (material.length !== 28) throw new Error("an AEAD_AES_128_GCM key has 28 bytes");
  const masterKey = material.subarray(0, 16);
  const masterSalt = material.subarray(16, 28);
  const sessionKey = await kdf(masterKey, masterSalt, LABEL_ENCRYPTION, 16);
  const salt = await kdf(masterKey, masterSalt, LABEL_SALT, 12);
  const key = await crypto.subtle.importKey("raw", sessionKey, "AES-GCM", false, ["encrypt", "decrypt"]);
  return { key, salt };
}

// Length of the RTP header (fixed part, CSRCs, extension block), or -1 if malformed.
export function rtpHeaderLength(packet) {
  if (packet.length < 12 || packet[0] >> 6 !== 2) return -1;
  let length = 12 + 4 * (packet[0] & 0x0f);
  if (packet[0] & 0x10) {
    if (packet.length < length + 4) return -1;
    length += 4 + 4 * ((packet[length + 2] << 8) | packet[length + 3]);
  }
  return length <= packet.length ? length : -1;
}

function iv(salt, ssrc, roc, seq) {
  const out = new Uint8Array(12);
  const view = new DataView(out.buffer);
  view.setUint32(2, ssrc);
  view.setUint32(6, roc);
  view.setUint16(10, seq);
  for (let i = 0; i < 12; i++) out[i] ^= salt[i];
  return out;
}

export class SrtpSender {
  static async create(material) {
    const sender = new SrtpSender();
    sender.session = await deriveSession(material);
    sender.roc = 0;
    sender.lastSeq = -1;
    return sender;
  }

  async protect(rtp) {
    const headerLength = rtpHeaderLength(rtp);
    if (headerLength < 0) throw new Error("malformed RTP packet");
    const view = new DataView(rtp.buffer, rtp.byteOffset, rtp.byteLength);
    const seq = view.getUint16(2);
    if (this.lastSeq >= 0 && seq < this.lastSeq && this.lastSeq - seq > 0x8000) this.roc = (this.roc + 1) >>> 0;
    this.lastSeq = seq;
    const header = rtp.subarray(0, headerLength);
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: iv(this.session.salt, view.getUint32(8), this.roc, seq), additionalData: header, tagLength: 128 },
      this.session.key,
      rtp.subarray(headerLength),
    );
    const out = new Uint8Array(headerLength + sealed.byteLength);
    out.set(header, 0);
    out.set(new Uint8Array(sealed), headerLength);
    return out;
  }
}

export class SrtpReceiver {
  static async create(material, ssrc) {
    const receiver = new SrtpReceiver();
    receiver.session = await deriveSession(material);
    receiver.ssrc = ssrc;
    receiver.highest = -1; // highest packet index authenticated so far
    receiver.window = 0n; // replay bitmap below `highest`
    return receiver;
  }

  // The clear RTP packet, or null when the packet fails authentication or is a replay.
  async unprotect(srtp) {
    const headerLength = rtpHeaderLength(srtp);
    if (headerLength < 0 || srtp.length < headerLength + TAG_LENGTH) return null;
    const view = new DataView(srtp.buffer, srtp.byteOffset, srtp.byteLength);
    if (view.getUint32(8) !== this.ssrc) return null;
    const seq = view.getUint16(2);
    const index = this._guessIndex(seq);
    if (index < 0 || this._replayed(index)) return null;
    let clear;
    try {
      clear = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: iv(this.session.salt, this.ssrc, Math.floor(index / 65536), seq), additionalData: srtp.subarray(0, headerLength), tagLength: 128 },
        this.session.key,
        srtp.subarray(headerLength),
      );
    } catch (_) {
      return null;
    }
    if (this._replayed(index)) return null; // a copy decrypted meanwhile
    this._accept(index);
    const out = new Uint8Array(headerLength + clear.byteLength);
    out.set(srtp.subarray(0, headerLength), 0);
    out.set(new Uint8Array(clear), headerLength);
    return out;
  }

  // RFC 3711 appendix A: the packet index from the sequence number and the highest index.
  _guessIndex(seq) {
    if (this.highest < 0) return seq;
    const roc = Math.floor(this.highest / 65536);
    const last = this.highest % 65536;
    let guess = roc;
    if (last < 0x8000) {
      if (seq - last > 0x8000) guess = roc - 1;
    } else if (last - 0x8000 > seq) {
      guess = roc + 1;
    }
    return guess < 0 ? -1 : guess * 65536 + seq;
  }

  _replayed(index) {
    if (this.highest < 0 || index > this.highest) return false;
    const age = this.highest - index;
    if (age >= REPLAY_WINDOW) return true;
    return ((this.window >> BigInt(age)) & 1n) === 1n;
  }

  _accept(index) {
    if (index > this.highest) {
      const shift = this.highest < 0 ? REPLAY_WINDOW : index - this.highest;
      this.window = shift >= REPLAY_WINDOW ? 1n : ((this.window << BigInt(shift)) | 1n) & ((1n << BigInt(REPLAY_WINDOW)) - 1n);
      this.highest = index;
    } else {
      this.window |= 1n << BigInt(this.highest - index);
    }
  }
}

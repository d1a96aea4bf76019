// Audio of a room: Opus with WebCodecs, RTP (PROTOCOL.md 11.2) with the RFC 6464 level, SRTP,
// capture and playout in AudioWorklets (worklet.js).

import { SrtpReceiver, SrtpSender, base64ToBytes, rtpHeaderLength } from "./srtp.js";
import { decodeVarint, encodeVarint } from "./wire.js";

const RATE = 48000;
const FRAME = 960;
const PAYLOAD_TYPE = 111;
const RED_PAYLOAD_TYPE = 63; // RFC 2198 redundancy, PROTOCOL.md 11.9
const MAX_REDUNDANCY = 2;
const MAX_REPORTED_FLOWS = 32; // receiver_report limits (PROTOCOL.md, FlowReception)
const MAX_EXPECTED = 1000;
const LEVEL_EXTENSION_ID = 1;
const VOICE_LEVEL = 50; // -50 dBov or louder counts as voice (the reference client's threshold)

// RFC 6464: the frame's RMS relative to full scale, in -dBov, 0..127.
export function audioLevel(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const rms = Math.sqrt(sum / samples.length);
  if (rms <= 0) return 127;
  return Math.max(0, Math.min(127, Math.round(-20 * Math.log10(rms))));
}

function random32() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

export function packetize(state, payload, level, marker) {
  const packet = new Uint8Array(20 + payload.length);
  const view = new DataView(packet.buffer);
  packet[0] = 0x90; // V=2, X=1
  packet[1] = (marker ? 0x80 : 0) | PAYLOAD_TYPE;
  view.setUint16(2, state.seq);
  view.setUint32(4, state.timestamp);
  view.setUint32(8, state.ssrc);
  view.setUint16(12, 0xbede);
  view.setUint16(14, 1);
  packet[16] = LEVEL_EXTENSION_ID << 4; // one-byte element, L=0: one byte of data
  packet[17] = (level <= VOICE_LEVEL ? 0x80 : 0) | level;
  packet.set(payload, 20);
  state.seq = (state.seq + 1) & 0xffff;
  state.timestamp = (state.timestamp + FRAME) >>> 0;
  return packet;
}

// The level of the first one-byte element with ID 1 (either RFC 8285 form), or 127.
export function readLevel(packet) {
  if (!(packet[0] & 0x10)) return 127;
  const start = 12 + 4 * (packet[0] & 0x0f);
  const profile = (packet[start] << 8) | packet[start + 1];
  const end = start + 4 + 4 * ((packet[start + 2] << 8) | packet[start + 3]);
  let at = start + 4;
  const twoByte = (profile & 0xfff0) === 0x1000;
  if (profile !== 0xbede && !twoByte) return 127;
  while (at < end) {
    if (packet[at] === 0) { at++; continue; }
    let id, length;
    if (twoByte) {
      id = packet[at];
      length = packet[at + 1];
      at += 2;
    } else {
      id = packet[at] >> 4;
      length = (packet[at] & 0x0f) + 1;
      if (id === 15) break;
      at += 1;
    }
    if (id === LEVEL_EXTENSION_ID && length === 1 && at < end) return packet[at] & 0x7f;
    at += length;
  }
  return 127;
}

// The primary Opus frame and the redundant blocks ({offset, payload}, oldest first) of a RED
// payload, or null for anything PROTOCOL.md 11.9's profile refuses (as media/red.py does).
export function parseRed(payload) {
  const headers = [];
  let at = 0;
  for (;;) {
    if (at >= payload.length) return null;
    const first = payload[at];
    if ((first & 0x7f) !== PAYLOAD_TYPE) return null;
    if (!(first & 0x80)) { at += 1; break; }
    if (headers.length === MAX_REDUNDANCY || at + 4 > payload.length) return null;
    const word = (payload[at + 1] << 16) | (payload[at + 2] << 8) | payload[at + 3];
    const offset = word >> 10;
    if (offset === 0 || offset % FRAME) return null;
    headers.push({ offset, length: word & 0x3ff });
    at += 4;
  }
  const redundant = [];
  for (const { offset, length } of headers) {
    if (at + length > payload.length) return null;
    if (length) redundant.push({ offset, payload: payload.subarray(at, at + length) });
    at += length;
  }
  if (at >= payload.length) return null;
  return { primary: payload.subarray(at), redundant };
}

class Flow {
  constructor(user, flowId, receiver, engine) {
    this.user = user;
    this.flowId = flowId;
    this.receiver = receiver;
    this.nextSeq = -1;
    this.level = 127;
    this.engine = engine;
    this.decoder = null;
    // RTP timestamps of the packets in the decoder, oldest first: one output per packet, and
    // the decoder's own output timestamps do not keep the gaps of DTX silence.
    this.inFlight = [];
    this.openDecoder();
    this.talkspurtStart = true;
    // receiver_report counts (PROTOCOL.md 11.9, as RFC 3550 A.3): highest sequence number
    // received (extended past wraps), where the previous report left it, arrivals since.
    this.highestSeq = null;
    this.reportBase = 0;
    this.reportReceived = 0;
    this.late = 0;
    this.jitterMs = 0; // RFC 3550 interarrival jitter
    this.lastTransit = null;
  }

  // A WebCodecs decoder closes itself for good on the first frame it cannot decode (any
  // speaker can send one): a fresh decoder takes over, so one bad frame costs the frames
  // queued with it, not the rest of the flow.
  openDecoder() {
    const decoder = new AudioDecoder({
      output: (data) => this.engine._decoded(this, data),
      error: (error) => {
        console.warn("decoder", error);
        if (this.decoder !== decoder) return;
        this.engine.decoderResets++;
        this.decoder = null;
        this.inFlight = [];
      },
    });
    // Safari decodes Opus only when configured at 48 kHz, which is what RTP Opus is.
    decoder.configure({ codec: "opus", sampleRate: RATE, numberOfChannels: 1 });
    this.decoder = decoder;
    this.inFlight = [];
  }

  count(seq, timestamp) {
    if (this.highestSeq === null) this.highestSeq = this.reportBase = seq - 1;
    const delta = ((seq - this.highestSeq) << 16) >> 16; // signed 16-bit distance
    this.highestSeq = Math.max(this.highestSeq, this.highestSeq + delta);
    this.reportReceived++;
    const transit = performance.now() - (timestamp * 1000) / RATE;
    if (this.lastTransit !== null) {
      let d = Math.abs(transit - this.lastTransit);
      if (d > 60000) d = 0; // a timestamp jump (new talkspurt base), not jitter
      this.jitterMs += (d - this.jitterMs) / 16;
    }
    this.lastTransit = transit;
  }

  // The FlowReception since the previous call, or null when nothing was expected.
  takeReport() {
    if (this.highestSeq === null) return null;
    const expected = this.highestSeq - this.reportBase;
    if (expected <= 0) return null;
    const report = {
      flow_id: this.flowId,
      expected: Math.min(expected, MAX_EXPECTED),
      lost: Math.min(Math.max(0, expected - this.reportReceived), MAX_EXPECTED),
      late: Math.min(this.late, expected, MAX_EXPECTED),
      jitter_ms: Math.min(10000, Math.round(this.jitterMs * 10) / 10),
    };
    this.reportBase = this.highestSeq;
    this.reportReceived = 0;
    this.late = 0;
    return report;
  }
}

export class MediaEngine {
  constructor(send) {
    this.send = send; // (Uint8Array) => void: one datagram
    this.context = null;
    this.playout = null;
    this.flows = new Map();
    this.recorded = null; // decoded frames {at, samples} while the test hook records
    this.onLevel = () => {};
    this.sending = null; // {flowId, ssrc, sender, seq, timestamp}
    this.captureNode = null;
    this.microphone = null;
    this.encoder = null;
    this.muted = true;
    this.framesSent = 0;
    this.framesDecoded = 0;
    this.framesRepaired = 0; // frames decoded from a RED copy in place of a lost packet
    this.decoderResets = 0; // decoders replaced after refusing a frame
  }

  async start() {
    if (this.context) return;
    this.context = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
    await this.context.audioWorklet.addModule(new URL("./worklet.js", import.meta.url));
    this.playout = new AudioWorkletNode(this.context, "salon-playout", { outputChannelCount: [1] });
    this.playout.connect(this.context.destination);
    if (this.context.state !== "running") await this.context.resume().catch(() => {});
  }

  // Keep every decoded frame with its media time (the tests compare it with what was said).
  record(on) {
    this.recorded = on ? [] : null;
  }

  // The recorded frames as one signal at their RTP timestamps (silence in gaps).
  takeRecording() {
    const frames = this.recorded || [];
    this.recorded = [];
    if (!frames.length) return new Float32Array(0);
    // Media time relative to the first frame, across a wrap of the 32-bit RTP timestamp.
    const first = frames[0].at;
    const offsets = frames.map((f) => ((f.at - first) | 0));
    const start = Math.min(...offsets);
    const end = Math.max(...offsets.map((o, i) => o + frames[i].samples.length));
    const out = new Float32Array(Math.min(end - start, RATE * 600));
    for (const [i, frame] of frames.entries()) {
      const at = offsets[i] - start;
      if (at + frame.samples.length <= out.length) out.set(frame.samples, at);
    }
    return out;
  }

  async addKey(mediaKey, ownUser) {
    if (mediaKey.profile !== "AEAD_AES_128_GCM") return;
    const material = base64ToBytes(mediaKey.key);
    if (mediaKey.user === ownUser) {
      const sender = await SrtpSender.create(material);
      this.sending = {
        flowId: mediaKey.flow_id,
        prefix: encodeVarint(mediaKey.flow_id),
        ssrc: mediaKey.ssrc >>> 0,
        sender,
        seq: random32() & 0x7fff,
        timestamp: random32(),
        marker: true,
      };
      return;
    }
    const receiver = await SrtpReceiver.create(material, mediaKey.ssrc >>> 0);
    this.removeFlow(mediaKey.flow_id);
    this.flows.set(mediaKey.flow_id, new Flow(mediaKey.user, mediaKey.flow_id, receiver, this));
  }

  removeFlow(flowId) {
    if (this.sending && this.sending.flowId === flowId) this.sending = null;
    const flow = this.flows.get(flowId);
    if (!flow) return;
    this.flows.delete(flowId);
    const decoder = flow.decoder;
    flow.decoder = null; // a late error callback must not reopen it
    try { if (decoder) decoder.close(); } catch (_) { /* already closed */ }
    if (this.playout) this.playout.port.postMessage({ type: "remove", flow: flowId });
  }

  forgetUser(user) {
    for (const flow of [...this.flows.values()]) if (flow.user === user) this.removeFlow(flow.flowId);
  }

  clear() {
    for (const flowId of [...this.flows.keys()]) this.removeFlow(flowId);
    this.sending = null;
  }

  async receive(datagram) {
    const prefix = decodeVarint(datagram);
    if (prefix === null) return;
    const flow = this.flows.get(prefix[0]);
    if (!flow) return;
    const packet = await flow.receiver.unprotect(datagram.subarray(prefix[1]));
    if (!packet || !this.flows.has(flow.flowId)) return;
    if (!flow.decoder || flow.decoder.state === "closed") flow.openDecoder();
    const payloadType = packet[1] & 0x7f;
    const payload = packet.subarray(rtpHeaderLength(packet));
    let primary = payload;
    let redundant = [];
    if (payloadType === RED_PAYLOAD_TYPE) {
      const red = parseRed(payload);
      if (!red) return;
      ({ primary, redundant } = red);
    } else if (payloadType !== PAYLOAD_TYPE || !payload.length) {
      return;
    }
    const seq = (packet[2] << 8) | packet[3];
    const timestamp = new DataView(packet.buffer, packet.byteOffset).getUint32(4);
    flow.count(seq, timestamp);
    const missing = flow.nextSeq < 0 ? 0 : (seq - flow.nextSeq) & 0xffff;
    if (missing >= 0x8000) { flow.late++; return; } // late: already past
    flow.nextSeq = (seq + 1) & 0xffff;
    if (packet[1] & 0x80) flow.talkspurtStart = true;
    flow.level = readLevel(packet);
    this.onLevel(flow.user, flow.level);
    // Packets seq - missing .. seq - 1 have not arrived and, decoded in order, cannot play any
    // more once this one is: a copy of one (the block at offset k * FRAME is packet seq - k)
    // takes its slot, oldest first. Nothing else is ever filled from a copy.
    for (const block of redundant) {
      if (block.offset / FRAME > missing) continue;
      this._decode(flow, (timestamp - block.offset) >>> 0, block.payload);
      this.framesRepaired++;
    }
    this._decode(flow, timestamp, primary);
  }

  _decode(flow, timestamp, data) {
    flow.inFlight.push(timestamp);
    flow.decoder.decode(new EncodedAudioChunk({
      type: "key",
      timestamp: Math.round((timestamp * 1e6) / RATE),
      data,
    }));
  }

  // PROTOCOL.md 11.9: one FlowReception per speaker flow heard since the previous call.
  takeReports() {
    const reports = [];
    for (const flow of this.flows.values()) {
      const report = flow.takeReport();
      if (report && reports.length < MAX_REPORTED_FLOWS) reports.push(report);
    }
    return reports;
  }

  _decoded(flow, data) {
    const samples = new Float32Array(data.numberOfFrames);
    data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
    const sent = flow.inFlight.shift();
    const at = sent === undefined ? Math.round((data.timestamp * RATE) / 1e6) : sent;
    data.close();
    if (this.recorded) this.recorded.push({ at, samples: samples.slice() });
    this.framesDecoded++;
    const talkspurtStart = flow.talkspurtStart;
    flow.talkspurtStart = false;
    if (this.playout) {
      this.playout.port.postMessage({ type: "frame", flow: flow.flowId, samples, talkspurtStart }, [samples.buffer]);
    }
  }

  // Open the microphone (once) and start encoding; frames go out only while on stage and unmuted.
  async startMicrophone() {
    if (this.microphone) return;
    await this.start();
    this.microphone = await navigator.mediaDevices.getUserMedia({
      // Echo cancellation keeps the room out of a speaker without headphones; the voice itself
      // goes out unprocessed, as the reference client sends it (no gain riding, no gating).
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    this.encoder = new AudioEncoder({
      output: (chunk) => this._encoded(chunk),
      error: (error) => console.warn("encoder", error),
    });
    this.encoder.configure({
      codec: "opus", sampleRate: RATE, numberOfChannels: 1, bitrate: 32000,
      opus: { frameDuration: 20000, complexity: 5 },
    });
    const source = this.context.createMediaStreamSource(this.microphone);
    this.captureNode = new AudioWorkletNode(this.context, "salon-capture", { numberOfInputs: 1, numberOfOutputs: 0 });
    source.connect(this.captureNode);
    let clock = 0;
    this.pendingLevels = [];
    this.captureNode.port.onmessage = ({ data: samples }) => {
      const level = audioLevel(samples);
      if (this.muted || !this.sending) {
        if (this.sending) this.sending.marker = true; // next packet starts a talkspurt
        this.onLevel(null, 127);
        return;
      }
      this.onLevel(null, level);
      this.pendingLevels.push(level);
      const frame = new AudioData({
        format: "f32-planar", sampleRate: RATE, numberOfFrames: samples.length,
        numberOfChannels: 1, timestamp: clock, data: samples,
      });
      clock += 20000;
      this.encoder.encode(frame);
      frame.close();
    };
  }

  async _encoded(chunk) {
    const level = this.pendingLevels.length ? this.pendingLevels.shift() : 127;
    const sending = this.sending;
    if (!sending || this.muted) return;
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const rtp = packetize(sending, payload, level, sending.marker);
    sending.marker = false;
    const srtp = await sending.sender.protect(rtp);
    if (this.sending !== sending || this.muted) return;
    const datagram = new Uint8Array(sending.prefix.length + srtp.length);
    datagram.set(sending.prefix, 0);
    datagram.set(srtp, sending.prefix.length);
    this.send(datagram);
    this.framesSent++;
  }

  stopMicrophone() {
    if (this.microphone) for (const track of this.microphone.getTracks()) track.stop();
    this.microphone = null;
    if (this.captureNode) this.captureNode.disconnect();
    this.captureNode = null;
    if (this.encoder && this.encoder.state !== "closed") this.encoder.close();
    this.encoder = null;
  }
}

// AudioWorklet processors: microphone capture in 20 ms frames, and playout of every speaker's
// decoded frames through an adaptive jitter buffer, mixed.

const FRAME = 960; // 20 ms at 48 kHz
const MIN_TARGET = 2; // frames buffered before playing: 40 ms ...
const MAX_TARGET = 10; // ... up to 200 ms after repeated underruns
const SHRINK_AFTER = 250; // frames (5 s) spent well above target before dropping one

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    let offset = 0;
    while (offset < input.length) {
      const take = Math.min(FRAME - this.filled, input.length - offset);
      this.frame.set(input.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === FRAME) {
        this.port.postMessage(this.frame, [this.frame.buffer]);
        this.frame = new Float32Array(FRAME);
        this.filled = 0;
      }
    }
    return true;
  }
}

// One speaker's frames waiting to be played.
class FlowBuffer {
  constructor() {
    this.frames = [];
    this.position = 0; // samples of frames[0] already played
    this.target = 3;
    this.playing = false;
    this.underran = false;
    this.above = 0;
  }

  push(samples, talkspurtStart) {
    if (this.underran && !talkspurtStart) {
      // Ran dry in the middle of speech: the network is jitterier than the buffer.
      this.target = Math.min(MAX_TARGET, this.target + 1);
    }
    this.underran = false;
    this.frames.push(samples);
    if (!this.playing && this.frames.length >= this.target) this.playing = true;
    if (this.frames.length > this.target + 2) {
      if (++this.above >= SHRINK_AFTER) {
        this.frames.shift(); // 20 ms less delay
        this.position = 0;
        this.target = Math.max(MIN_TARGET, this.target - 1);
        this.above = 0;
      }
    } else {
      this.above = 0;
    }
    if (this.frames.length > MAX_TARGET * 3) this.frames.splice(0, this.frames.length - this.target);
  }

  mixInto(out) {
    if (!this.playing) return;
    let written = 0;
    while (written < out.length) {
      const frame = this.frames[0];
      if (!frame) {
        this.playing = false;
        this.underran = true;
        return;
      }
      const take = Math.min(out.length - written, frame.length - this.position);
      for (let i = 0; i < take; i++) out[written + i] += frame[this.position + i];
      written += take;
      this.position += take;
      if (this.position === frame.length) {
        this.frames.shift();
        this.position = 0;
      }
    }
  }
}

class PlayoutProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.flows = new Map();
    this.port.onmessage = ({ data }) => {
      if (data.type === "frame") {
        let flow = this.flows.get(data.flow);
        if (!flow) this.flows.set(data.flow, (flow = new FlowBuffer()));
        flow.push(data.samples, data.talkspurtStart);
      } else if (data.type === "remove") {
        this.flows.delete(data.flow);
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    for (const flow of this.flows.values()) flow.mixInto(out);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("salon-capture", CaptureProcessor);
registerProcessor("salon-playout", PlayoutProcessor);

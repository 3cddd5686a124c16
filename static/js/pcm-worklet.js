// AudioWorklet: microphone audio (any rate, mixed to mono) -> 16-bit little-endian PCM at
// the target rate, posted in frames of a fixed byte size with the frame's peak level.
//
// Resampling is band-limited: a Blackman-windowed sinc with its cutoff a little below
// the output Nyquist frequency, read from a precomputed table. Speech recognisers lose
// words to aliasing, which a plain linear interpolation would let through.

const ZERO_CROSSINGS = 12; // kernel half-width, in periods of the cutoff frequency
const TABLE_STEPS = 512; // table resolution per input sample

class Pcm16Encoder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.outRate = opts.targetRate || 16000;
    this.frameSamples = (opts.frameBytes || 1024) / 2;
    this.step = sampleRate / this.outRate; // input samples per output sample
    this.passThrough = Math.abs(this.step - 1) < 1e-9;
    // Cutoff as a fraction of the input rate, with 10 % room for the transition band.
    this.cutoff = 0.5 * Math.min(1, 1 / this.step) * 0.9;
    this.halfWidth = ZERO_CROSSINGS / (2 * this.cutoff); // in input samples
    this.table = this.buildKernel();
    this.history = new Float32Array(0); // input samples not yet fully used
    this.historyStart = 0; // absolute index of history[0]
    this.position = 0; // absolute input position of the next output sample
    this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
    this.filled = 0;
    this.peak = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  buildKernel() {
    const size = Math.ceil(this.halfWidth * TABLE_STEPS) + 2;
    const table = new Float32Array(size);
    const gain = 2 * this.cutoff;
    for (let i = 0; i < size; i++) {
      const x = i / TABLE_STEPS; // distance in input samples
      if (x > this.halfWidth) break;
      const arg = 2 * Math.PI * this.cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
      const ratio = x / this.halfWidth;
      const blackman = 0.42 + 0.5 * Math.cos(Math.PI * ratio) + 0.08 * Math.cos(2 * Math.PI * ratio);
      table[i] = gain * sinc * blackman;
    }
    return table;
  }

  kernel(distance) {
    const x = Math.abs(distance) * TABLE_STEPS;
    const i = Math.floor(x);
    if (i + 1 >= this.table.length) return 0;
    const frac = x - i;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * frac;
  }

  append(samples) {
    const joined = new Float32Array(this.history.length + samples.length);
    joined.set(this.history);
    joined.set(samples, this.history.length);
    this.history = joined;
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.peak = Math.max(this.peak, Math.abs(clamped));
    const int = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    this.frame.setInt16(this.filled * 2, Math.round(int), true);
    this.filled += 1;
    if (this.filled === this.frameSamples) {
      const buffer = this.frame.buffer;
      this.port.postMessage({ pcm: buffer, peak: this.peak }, [buffer]);
      this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
      this.filled = 0;
      this.peak = 0;
    }
  }

  resample() {
    const end = this.historyStart + this.history.length;
    while (this.position + this.halfWidth < end) {
      const first = Math.max(this.historyStart, Math.ceil(this.position - this.halfWidth));
      const last = Math.min(end - 1, Math.floor(this.position + this.halfWidth));
      let sum = 0;
      for (let k = first; k <= last; k++) {
        sum += this.history[k - this.historyStart] * this.kernel(this.position - k);
      }
      this.emit(sum);
      this.position += this.step;
    }
    const keepFrom = Math.max(this.historyStart, Math.floor(this.position - this.halfWidth));
    this.history = this.history.slice(keepFrom - this.historyStart);
    this.historyStart = keepFrom;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      if (this.passThrough) {
        for (let i = 0; i < channel.length; i++) this.emit(channel[i]);
      } else {
        this.append(channel);
        this.resample();
      }
    }
    return this.running;
  }
}

registerProcessor("pcm16-encoder", Pcm16Encoder);

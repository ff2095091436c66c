// The beating side of bench/fleet.py in Node (@grpc/grpc-js, tools/package.json): each key
// opens one StreamHeartbeats stream and writes one beat a second, as `coordctl node agent`
// does; a stream that fails is opened again after a pause. Python's grpc.aio client costs
// ~100 us of CPU a beat, so on a small machine the load generator would take the core the
// daemon needs; this one costs a fraction of that. Reads its job as JSON (argv[2]), prints
// its result as JSON: accepted beats/s (the `beats` the server's replies count, over the
// seconds each stream was open), its own CPU over the steady part, reconnects and failures.
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const request = Buffer.from(job.request_b64, "base64");
const METHOD = "/coordd.v1.NodeService/StreamHeartbeats";
const now = () => Date.now() / 1000;
const identity = (x) => x;
const channels = [];
for (let i = 0; i < Math.max(1, Math.floor(job.keys.length / job.per_channel)); i++) {
  channels.push(
    new grpc.Client(job.target, grpc.credentials.createInsecure(), {
      "grpc.use_local_subchannel_pool": 1, // a connection per channel
      "grpc.max_concurrent_streams": 100000,
      "grpc-node.max_session_memory": 1 << 30,
    }),
  );
}

// The `beats` field (2, varint) of a StreamHeartbeatsResponse.
function beatsOf(buf) {
  let i = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    let byte;
    do {
      byte = buf[i++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    return value;
  };
  while (i < buf.length) {
    const tag = varint();
    const wire = tag & 7;
    if (wire === 0) {
      const value = varint();
      if (tag >> 3 === 2) return value;
    } else if (wire === 2) {
      const length = varint(); // read before adding: `i += varint()` would add to the old i
      i += length;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else return 0;
  }
  return 0;
}

const failures = {};
let reconnects = 0;
const replyLatencies = [];

function node(index, key) {
  return new Promise((resolve) => {
    let nextAt = job.start_at + index / job.ramp;
    const opened = nextAt;
    let accepted = 0;
    const md = new grpc.Metadata();
    md.add("authorization", `Bearer ${key}`);
    const channel = channels[index % channels.length];
    // Beats the server counted over the seconds the stream was writing (from its first beat
    // to its half-close); how long the reply then took is the daemon's backlog, kept apart.
    let endedAt = null;
    const finish = () => {
      if (endedAt !== null) replyLatencies.push(now() - endedAt);
      resolve(accepted / Math.max((endedAt ?? now()) - opened, job.interval));
    };
    const open = () => {
      let ended = false;
      let timer = null;
      const call = channel.makeClientStreamRequest(METHOD, identity, identity, md, {}, (err, reply) => {
        ended = true;
        if (timer) clearTimeout(timer);
        if (!err) {
          accepted += beatsOf(reply);
          finish();
          return;
        }
        reconnects += 1;
        const kind = `${grpc.status[err.code]}: ${err.details}`;
        failures[kind] = (failures[kind] || 0) + 1;
        setTimeout(() => {
          nextAt = Math.max(nextAt, now());
          if (nextAt < job.stop_at) open();
          else finish();
        }, job.reconnect_s * 1000);
      });
      const tick = () => {
        timer = null;
        if (ended) return;
        if (nextAt >= job.stop_at) {
          endedAt = now();
          call.end();
          return;
        }
        call.write(request);
        nextAt += job.interval;
        timer = setTimeout(tick, Math.max(0, (nextAt - now()) * 1000));
      };
      timer = setTimeout(tick, Math.max(0, (nextAt - now()) * 1000));
    };
    setTimeout(open, Math.max(0, (nextAt - now()) * 1000));
  });
}

async function main() {
  let cpu = null;
  let steadyWall = 0;
  let cores = 0;
  setTimeout(() => {
    cpu = process.cpuUsage();
    steadyWall = now();
  }, Math.max(0, (job.steady_at - now()) * 1000));
  setTimeout(() => {
    if (cpu === null) return;
    const used = process.cpuUsage(cpu);
    cores = (used.user + used.system) / 1e6 / Math.max(now() - steadyWall, 1e-3);
  }, Math.max(0, (job.stop_at - 0.5 - now()) * 1000));
  const rates = await Promise.all(job.keys.map((key, index) => node(index, key)));
  for (const channel of channels) channel.close();
  process.stdout.write(
    JSON.stringify({
      accepted_per_s: rates.reduce((a, b) => a + b, 0),
      cpu_cores: cores,
      reconnects,
      failures,
      reply_latencies: replyLatencies,
    }),
  );
}

main();

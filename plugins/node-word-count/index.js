// A Sphere plugin in Node.js: counts the words of a text and returns the most frequent ones.
//
// Input: UTF-8 text (text/plain). Output: JSON (application/json):
//   {"words": <total>, "distinct": <distinct words>, "top": [[word, count], ...]}
// Words are runs of letters, digits and apostrophes, compared case-insensitively.
//
// Run it by hand:  SPHERE_PLUGIN_LISTEN=127.0.0.1:50052 node index.js
// or let a Sphere node start it (a `command` entry in the node's `plugins.entries`).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');

// The contract is loaded from proto/ at run time: no generated code to keep in step.
const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync('sphere/v1/plugin.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: false,
  longs: Number,
  defaults: true,
});
const sphere = grpc.loadPackageDefinition(definition).sphere.v1;

const TOP = 10;

function countWords(text) {
  const counts = new Map();
  let total = 0;
  for (const match of text.toLowerCase().matchAll(/[\p{L}\p{N}']+/gu)) {
    const word = match[0];
    counts.set(word, (counts.get(word) || 0) + 1);
    total += 1;
  }
  const top = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, TOP);
  return { words: total, distinct: counts.size, top };
}

const service = {
  describe(_call, callback) {
    callback(null, {
      name: 'word-count',
      version: '1.0.0',
      description: 'counts the words of a text and returns the most frequent ones',
      inputContentType: 'text/plain',
      outputContentType: 'application/json',
      maxConcurrency: 0,
      // The same text always gives the same counts, and counting twice does no harm.
      deterministic: true,
      idempotent: true,
    });
  },
  execute(call, callback) {
    const input = call.request.input;
    const text = new TextDecoder('utf-8', { fatal: true });
    let decoded;
    try {
      decoded = text.decode(input);
    } catch (_error) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: 'the input must be UTF-8 text' });
      return;
    }
    callback(null, { output: Buffer.from(JSON.stringify(countWords(decoded))) });
  },
};

function main() {
  const listen = process.env.SPHERE_PLUGIN_LISTEN || '127.0.0.1:50052';
  // gRPC refuses messages over 4 MiB by default; the node says how large tasks may be.
  const maxMessage = Number(process.env.SPHERE_PLUGIN_MAX_MESSAGE_BYTES || 16 * 1024 * 1024 + 65536);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessage,
    'grpc.max_send_message_length': maxMessage,
  });
  server.addService(sphere.PluginService.service, service);
  const health = new HealthImplementation({ '': 'SERVING' });
  health.addToServer(server);
  server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (error, port) => {
    if (error) {
      console.error(`could not listen on ${listen}: ${error.message}`);
      process.exit(1);
    }
    const host = listen.slice(0, listen.lastIndexOf(':'));
    // The handshake line: tells a node that started this plugin where it listens.
    process.stdout.write(`SPHERE_PLUGIN_ADDR=${host}:${port}\n`);
  });
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();

// Drives a real kvwire-receiver from Node.js with independent clients:
// the official `openai` package against its OpenAI-compatible HTTP API
// (model list, a plain answer, a streamed one with usage, errors, auth),
// and @grpc/grpc-js + @grpc/proto-loader against kvwire.v1 from the .proto
// (Receiver.Answer on the receiver, Sharer.GetInfo on the sharer).
// Asserts what it can alone and prints one JSON line of what it got for
// the C++ test (tests/receiver_service/openai_e2e_test.cc) to compare with
// its own gRPC answers.
//
// Usage: node openai_clients_test.cjs NODE_MODULES_DIR
// Environment: KVWIRE_HTTP_URL (http://127.0.0.1:PORT/v1), KVWIRE_MODEL,
// KVWIRE_TOKEN, KVWIRE_RECEIVER_TARGET and KVWIRE_SHARER_TARGET
// (127.0.0.1:PORT), KVWIRE_PROTO_DIR (the repository's proto/),
// KVWIRE_QUESTION, KVWIRE_MAX_TOKENS, KVWIRE_REQUEST_ID.
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const { createRequire } = require('node:module');

const modules = process.argv[2];
const load = createRequire(path.join(modules, 'kvwire-openai-e2e.js'));
const OpenAI = load('openai');
const grpc = load('@grpc/grpc-js');
const protoLoader = load('@grpc/proto-loader');

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const baseURL = env('KVWIRE_HTTP_URL');
const model = env('KVWIRE_MODEL');
const token = env('KVWIRE_TOKEN');
const question = env('KVWIRE_QUESTION');
const maxTokens = Number(env('KVWIRE_MAX_TOKENS'));
// The C++ client's request id: it is on the wire, so equal ids give equal
// byte counts.
const requestId = env('KVWIRE_REQUEST_ID');
const spec = { scheme: 'int4', selection: { mode: 'back', proportion: 0.5 } };

// No retries: a 429 or 5xx must show, not be retried away.
const client = new OpenAI({ baseURL, apiKey: token, maxRetries: 0, timeout: 120000 });

async function expectError(promise, status, check) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
    assert.equal(e.status, status, `status of ${e.message}`);
    check(e);
    return { status: e.status, type: e.type ?? null, code: e.code ?? null, param: e.param ?? null };
  }
  assert.fail(`expected HTTP ${status}`);
}

function grpcAnswer(request) {
  const definition = protoLoader.loadSync('kvwire/v1/kvwire.proto', {
    includeDirs: [env('KVWIRE_PROTO_DIR')], keepCase: true, longs: String,
    enums: String, defaults: true, oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).kvwire.v1;
  const credentials = grpc.credentials.createInsecure();
  const receiver = new v1.Receiver(env('KVWIRE_RECEIVER_TARGET'), credentials);
  const sharer = new v1.Sharer(env('KVWIRE_SHARER_TARGET'), credentials);
  const deadline = () => new Date(Date.now() + 120000);
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  const call = (stub, method, req, md) => new Promise((resolve, reject) => {
    stub[method](req, md ?? new grpc.Metadata(), { deadline: deadline() },
      (err, res) => (err ? reject(err) : resolve(res)));
  });
  return Promise.all([
    call(receiver, 'Answer', request, metadata),
    call(sharer, 'GetInfo', {}),
    call(receiver, 'Answer', request).then(
      () => assert.fail('Answer without a token succeeded'),
      (err) => err.code),
  ]).finally(() => { receiver.close(); sharer.close(); });
}

async function main() {
  const out = {};

  const models = await client.models.list();
  const ids = [];
  for await (const m of models) ids.push(m.id);
  assert.deepEqual(ids, [model]);
  out.models = ids;

  // Not streamed, C2C with an INT4 transfer of half the prompt.
  const completion = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: question }],
    max_tokens: maxTokens, kvwire: { mode: 'c2c', spec, request_id: requestId },
  });
  assert.equal(completion.object, 'chat.completion');
  assert.match(completion.id, /^chatcmpl-/);
  assert.equal(typeof completion.created, 'number');
  assert.equal(completion.model, model);
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(completion.choices[0].finish_reason));
  const usage = completion.usage;
  assert.ok(usage.prompt_tokens > 0);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  assert.equal(completion.kvwire.mode, 'c2c');
  assert.equal(completion.kvwire.fell_back, false, completion.kvwire.fallback_reason);
  assert.equal(completion.kvwire.transfer.spec.scheme, 'SCHEME_INT4');
  out.completion = {
    text: completion.choices[0].message.content,
    finish_reason: completion.choices[0].finish_reason,
    usage, wire_bytes: completion.kvwire.transfer.wire_bytes,
    serialized_bytes: completion.kvwire.transfer.serialized_bytes,
    token_ids: completion.kvwire.token_ids,
    tokens_sent: completion.kvwire.transfer.tokens_sent,
  };

  // Streamed, the same request: the same text, piece by piece.
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: question }],
    max_completion_tokens: maxTokens, stream: true,
    stream_options: { include_usage: true }, kvwire: { mode: 'c2c', spec, request_id: requestId },
  });
  let text = '';
  let chunks = 0;
  let finishReason = null;
  let streamUsage = null;
  let report = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    assert.equal(chunk.id, stream.id ?? chunk.id);
    ++chunks;
    if (chunk.usage) streamUsage = chunk.usage;
    if (chunk.kvwire) report = chunk.kvwire;
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? '';
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  }
  // At least the finish_reason and usage chunks; random weights write
  // bytes that seldom form whole characters, so content chunks are few.
  assert.ok(chunks >= 2, `only ${chunks} chunks`);
  assert.ok(streamUsage, 'no usage chunk');
  assert.ok(report, 'no kvwire report');
  out.stream = { text, chunks, finish_reason: finishReason, usage: streamUsage,
                 wire_bytes: report.transfer.wire_bytes,
                 serialized_bytes: report.transfer.serialized_bytes,
                 token_ids: report.token_ids };

  // A stop sequence cuts the answer.
  if (text.length > 2) {
    const stop = text.slice(1, 2);
    const cut = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: question }],
      max_tokens: maxTokens, stop: [stop], kvwire: { mode: 'c2c', spec, request_id: requestId },
    });
    assert.equal(cut.choices[0].message.content, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
    out.stop = { stop, text: cut.choices[0].message.content };
  }

  // Errors, in OpenAI's shape.
  out.errors = {
    model: await expectError(client.chat.completions.create({
      model: 'gpt-4o', messages: [{ role: 'user', content: question }],
    }), 404, (e) => assert.equal(e.code, 'model_not_found')),
    n: await expectError(client.chat.completions.create({
      model, n: 2, messages: [{ role: 'user', content: question }],
    }), 400, (e) => { assert.equal(e.param, 'n'); assert.equal(e.type, 'invalid_request_error'); }),
    max_tokens: await expectError(client.chat.completions.create({
      model, max_tokens: 1000000, messages: [{ role: 'user', content: question }],
    }), 400, (e) => assert.equal(e.type, 'invalid_request_error')),
    streamed_bad_spec: await expectError(client.chat.completions.create({
      model, stream: true, messages: [{ role: 'user', content: question }],
      kvwire: { spec: { scheme: 'int3' } },
    }), 400, (e) => assert.equal(e.param, 'kvwire.spec.scheme')),
  };
  const intruder = new OpenAI({ baseURL, apiKey: 'wrong-token', maxRetries: 0 });
  out.errors.auth = await expectError(intruder.chat.completions.create({
    model, messages: [{ role: 'user', content: question }],
  }), 401, (e) => assert.ok(e instanceof OpenAI.AuthenticationError));
  out.errors.auth_models = await expectError(intruder.models.list(), 401, () => {});

  // kvwire.v1 from JavaScript.
  const [answer, info, unauthenticated] = await grpcAnswer({
    request_id: requestId, question, mode: 'ANSWER_MODE_C2C',
    spec: { scheme: 'SCHEME_INT4', selection: { mode: 'SELECTION_BACK', proportion: 0.5 } },
    generation: { max_new_tokens: maxTokens },
  });
  assert.equal(unauthenticated, grpc.status.UNAUTHENTICATED);
  assert.equal(answer.request_id, requestId);
  assert.equal(answer.mode, 'ANSWER_MODE_C2C');
  assert.ok(info.model.num_layers > 0);
  out.grpc = {
    text: answer.text, token_ids: answer.token_ids,
    wire_bytes: answer.transfer.wire_bytes,
    serialized_bytes: answer.transfer.serialized_bytes,
    sharer_layers: info.model.num_layers,
    sharer_fingerprint: info.model.fingerprint,
  };
  process.stdout.write(`KVWIRE_RESULT ${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

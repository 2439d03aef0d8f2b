#!/usr/bin/env node
// A Node.js client under test (issue [clients]): mqtt.js over a WebSocket to AWS IoT with
// a SigV4-presigned URL it signs itself, with Cognito credentials (aws-iot.md §1, §6).
//
// Like a browser player: GetId and GetCredentialsForIdentity on the Cognito identity pool
// (AWS JSON 1.1 over HTTPS), then the URL signed for service `iotdevicegateway`, the
// canonical query without the session token, and the token appended after the signature
// (aws-iot.md §1.5). It subscribes, publishes, gets its message back and exits 0.
//
// It finds the world in the descriptor named by IOT_HARNESS_DESCRIPTOR and trusts the
// world's CA through NODE_EXTRA_CA_CERTS (DESIGN.md contract 1). In `iot-harness
// sandbox` (the descriptor has a `sandbox` section) it uses the real names on port 443;
// otherwise it dials the world's address and bound ports while TLS (SNI, certificate
// check) and the signed Host header name the real endpoint. Lines of JSON on stdout
// whose `kind` starts with `client.` become events on the harness's timeline.
//
//   node client.js [TOPIC]
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const mqtt = require('mqtt');

/** Milliseconds the whole run may take. */
const DEADLINE_MS = 15000;

function emit(kind, fields = {}) {
  process.stdout.write(JSON.stringify({ kind, ...fields }) + '\n');
}

function fail(stage, error) {
  emit('client.error', { stage, error: String(error && error.message ? error.message : error) });
  process.exit(1);
}

// Cognito (aws-iot.md §6): unsigned calls, AWS JSON 1.1.

async function cognitoCall(url, operation, body) {
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/x-amz-json-1.1',
      'X-Amz-Target': `AWSCognitoIdentityService.${operation}`,
    },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    throw new Error(`${operation}: HTTP ${response.status} ${answer.__type || ''}`);
  }
  return answer;
}

async function cognitoCredentials(cognitoUrl, poolId) {
  const { IdentityId } = await cognitoCall(cognitoUrl, 'GetId', { IdentityPoolId: poolId });
  const { Credentials } = await cognitoCall(cognitoUrl, 'GetCredentialsForIdentity', {
    IdentityId,
  });
  return {
    identityId: IdentityId,
    accessKeyId: Credentials.AccessKeyId,
    secretKey: Credentials.SecretKey,
    sessionToken: Credentials.SessionToken,
  };
}

// SigV4 query signing (aws-iot.md §1.2-§1.5).

/** RFC 3986 encoding, as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
function uriEncode(text) {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

const sha256 = (data) => crypto.createHash('sha256').update(data, 'utf8').digest('hex');
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data, 'utf8').digest();

function presign({ host, region, credentials, now = new Date() }) {
  const amzDate = now.toISOString().replace(/[:-]|\.\d{3}/g, ''); // 20240101T000000Z
  const date = amzDate.slice(0, 8);
  const service = 'iotdevicegateway';
  const scope = `${date}/${region}/${service}/aws4_request`;
  const params = {
    'X-Amz-Algorithm': 'AWS4-HMAC-SHA256',
    'X-Amz-Credential': `${credentials.accessKeyId}/${scope}`,
    'X-Amz-Date': amzDate,
    'X-Amz-SignedHeaders': 'host',
  };
  const query = Object.keys(params)
    .sort()
    .map((name) => `${uriEncode(name)}=${uriEncode(params[name])}`)
    .join('&');
  const canonical = ['GET', '/mqtt', query, `host:${host}\n`, 'host', sha256('')].join('\n');
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n');
  let key = hmac(`AWS4${credentials.secretKey}`, date);
  for (const part of [region, service, 'aws4_request']) key = hmac(key, part);
  const signature = crypto.createHmac('sha256', key).update(toSign, 'utf8').digest('hex');
  // The session token goes after the signature, unsigned (aws-iot.md §1.5).
  return (
    `/mqtt?${query}&X-Amz-Signature=${signature}` +
    `&X-Amz-Security-Token=${uriEncode(credentials.sessionToken)}`
  );
}

async function main() {
  const topic = process.argv[2] || 'node/mqttjs';
  const file = process.env.IOT_HARNESS_DESCRIPTOR;
  if (!file) fail('descriptor', 'IOT_HARNESS_DESCRIPTOR is not set: run this under the harness');
  const world = JSON.parse(fs.readFileSync(file, 'utf8'));
  const { iot, cognito } = world;
  const sandbox = Boolean(world.sandbox);
  const endpoint = iot.endpoint;
  setTimeout(() => fail('deadline', `no round trip within ${DEADLINE_MS} ms`), DEADLINE_MS).unref();

  const cognitoUrl = sandbox ? `https://${cognito.endpoint}/` : cognito.url;
  let credentials;
  try {
    credentials = await cognitoCredentials(cognitoUrl, cognito.identity_pool_id);
  } catch (error) {
    fail('credentials', error);
  }
  emit('client.credentials', { source: 'cognito', access_key_id: credentials.accessKeyId });

  const path = presign({ host: endpoint, region: iot.region, credentials });
  const url = sandbox
    ? `wss://${endpoint}${path}`
    : `wss://${iot.connect_host}:${iot.wss_port}${path}`;
  const clientId = `node-mqttjs-${crypto.randomBytes(4).toString('hex')}`;
  emit('client.started', { library: `mqtt.js ${mqttVersion()}`, endpoint, client_id: clientId });
  const client = mqtt.connect(url, {
    clientId,
    protocolVersion: 4,
    keepalive: 30,
    reconnectPeriod: 1000, // AWS allows one CONNECT per second per client id (§4.3)
    connectTimeout: 5000,
    // The name TLS checks and the Host that was signed: the endpoint, wherever we dial.
    wsOptions: { servername: endpoint, headers: { Host: endpoint } },
  });
  client.on('connect', (connack) => {
    emit('client.connected', { session_present: Boolean(connack.sessionPresent) });
    client.subscribe(topic, { qos: 1 }, (error, granted) => {
      if (error) fail('subscribe', error);
      emit('client.subscribed', { topic, qos: granted[0].qos });
      client.publish(topic, 'hello from mqtt.js', { qos: 1 });
    });
  });
  client.on('message', (got, payload) => {
    emit('client.message', { topic: got, size: payload.length });
    // mqtt.js sends the PUBACK for this message after the 'message' handlers return; ending
    // here and now would refuse that PUBACK ("client disconnecting"), so end on the next turn.
    setImmediate(() =>
      client.end(false, () => {
        emit('client.disconnected', { clean: true });
        process.exit(0);
      }),
    );
  });
  client.on('error', (error) => emit('client.error', { stage: 'mqtt', error: error.message }));
  client.on('close', () => emit('client.closed', {}));
}

function mqttVersion() {
  try {
    return require('mqtt/package.json').version;
  } catch {
    return 'unknown';
  }
}

main().catch((error) => fail('main', error));

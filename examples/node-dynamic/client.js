#!/usr/bin/env node
// A Node client of nudge that loads the .proto files at run time: no
// generated code and no build step, only @grpc/proto-loader (protobuf.js)
// and @grpc/grpc-js. It publishes one event for a shopper, asks for a
// decision on the web channel and reads the shopper's profile back, and
// prints each result as one JSON line. Any error exits non-zero.
//
// Every nudge proto imports buf/validate/validate.proto (protovalidate
// rules). protobuf.js resolves imports only through includeDirs, so that
// file's root, third_party/protovalidate, is listed next to proto/; without
// it loading fails on that import. The google/protobuf well-known types
// come with protobuf.js. validate.proto itself needs protobuf.js 8 to parse
// (package.json overrides proto-loader's protobufjs ^7; README.md says why).
import { readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
// NUDGE_REPO: the nudge checkout holding proto/ and third_party/ (default:
// the one this example is in).
const repo = resolve(process.env.NUDGE_REPO || join(here, "..", ".."));
const protoDir = join(repo, "proto");
const protovalidateDir = join(repo, "third_party", "protovalidate");

const addr = process.env.NUDGE_ADDR || "127.0.0.1:7070";
const user = process.env.NUDGE_USER || `node-dyn-${randomUUID()}`;
const timeoutMs = Number(process.env.NUDGE_TIMEOUT_MS || 5000);

// Every .proto of nudge.v1, named relative to proto/ as their imports name
// them, so each file is loaded once.
const files = readdirSync(join(protoDir, "nudge", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .sort()
  .map((f) => `nudge/v1/${f}`);

const definition = protoLoader.loadSync(files, {
  includeDirs: [protoDir, protovalidateDir],
  keepCase: true, // field names as in the .proto (user_id), as printed below
  longs: String, // uint64 versions and Timestamp seconds as decimal strings
  enums: String, // "EVENT_STATUS_APPLIED", not 1
  defaults: true,
  oneofs: true,
});
const nudge = grpc.loadPackageDefinition(definition).nudge.v1;

const creds = grpc.credentials.createInsecure();
const ingest = new nudge.IngestService(addr, creds);
const decisions = new nudge.DecisionService(addr, creds);
const profiles = new nudge.ProfileService(addr, creds);

// call invokes a unary method with a deadline and resolves to its response.
function call(client, method, request) {
  const deadline = new Date(Date.now() + timeoutMs);
  return new Promise((ok, fail) => {
    client[method](request, { deadline }, (err, res) => (err ? fail(err) : ok(res)));
  });
}

// timestamp converts a Date to a google.protobuf.Timestamp.
function timestamp(d) {
  const ms = d.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

// iso converts a google.protobuf.Timestamp (seconds as a string) to RFC 3339.
function iso(ts) {
  if (!ts) return undefined;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6)).toISOString();
}

function print(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function main() {
  // Event time is now: nudge rejects events too far in the past or future.
  const eventId = `${user}-view-1`;
  const pub = await call(ingest, "Publish", {
    events: [
      {
        event_id: eventId,
        user_id: user,
        type: "view",
        occurred_at: timestamp(new Date()),
        category: "phones",
        item_id: "sku-1",
      },
    ],
  });
  for (const r of pub.results) {
    print({ rpc: "Publish", user_id: user, event_id: r.event_id, status: r.status, reason: r.reason || undefined, profile_version: r.profile_version });
    if (r.status === "EVENT_STATUS_REJECTED") {
      throw new Error(`event ${r.event_id} rejected: ${r.reason}`);
    }
  }
  const version = pub.results[0].profile_version;

  // A 1s budget (Duration): the server default (10ms) can run out on a
  // busy machine's first decision, which would answer the fallback.
  // min_profile_version: decide on a profile that includes the event.
  const dec = await call(decisions, "GetDecision", {
    user_id: user,
    channel: "web",
    placement: "home_banner",
    budget: { seconds: "1", nanos: 0 },
    min_profile_version: version,
  });
  const d = dec.decision;
  print({
    rpc: "GetDecision",
    user_id: user,
    channel: "web",
    verdict: d.verdict,
    offer_id: d.offer ? d.offer.id : "",
    payload: d.offer ? d.offer.payload : {},
    degraded: d.degraded,
    stale: d.stale,
    decision_id: d.decision_id,
    profile_version: dec.profile_version,
  });

  const prof = await call(profiles, "GetProfile", { user_id: user });
  const p = prof.profile;
  print({
    rpc: "GetProfile",
    user_id: p.user_id,
    version: p.version,
    updated_at: iso(p.updated_at),
    totals: p.totals,
    last_seen: Object.fromEntries(Object.entries(p.last_seen).map(([k, v]) => [k, iso(v)])),
  });
}

main()
  .catch((err) => {
    // A grpc-js error's message starts with its code: "14 UNAVAILABLE: ...".
    process.stderr.write(`node-dynamic: ${err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    ingest.close();
    decisions.close();
    profiles.close();
  });

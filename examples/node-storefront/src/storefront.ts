// storefront: what a Node storefront backend does with nudge.
//
// It reports three views of the phones category for one shopper through
// nudge.v1.IngestService/Publish, then asks nudge.v1.DecisionService/
// GetDecision what to show on the web and whether to text them, and prints
// every outcome as one JSON line on stdout. It exits non-zero on any error
// (nudge unreachable, an RPC failing, an event rejected).
//
// It speaks real gRPC (HTTP/2) to nudged through @connectrpc/connect-node's
// gRPC transport, with the stubs buf generates into src/gen/ (see
// buf.gen.ts.yaml at the repository root).
//
// Environment:
//   NUDGE_ADDR   nudged's gRPC address, host:port (default 127.0.0.1:7070);
//                an http:// URL is accepted too
//   NUDGE_USER   the shopper's user id (default: a new one per run, so a
//                rerun is not deduplicated or cooled down)
//   NUDGE_TZ     optional IANA time zone sent as the events' "tz"
//                attribute; the rules' quiet hours (no SMS 21:00-08:00,
//                local time) are judged in it
//   NUDGE_TIMEOUT_MS  deadline of each call (default 5000)

import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { DecisionService, Verdict } from "./gen/nudge/v1/decision_pb.js";
import { EventSchema, type Event } from "./gen/nudge/v1/event_pb.js";
import { EventStatus, IngestService } from "./gen/nudge/v1/ingest_pb.js";

const addr = process.env.NUDGE_ADDR || "127.0.0.1:7070";
const baseUrl = /^https?:\/\//.test(addr) ? addr : `http://${addr}`;
const user = process.env.NUDGE_USER || `node-shopper-${Date.now().toString(36)}`;
const tz = process.env.NUDGE_TZ || "";
const timeoutMs = Number(process.env.NUDGE_TIMEOUT_MS || "5000");

function emit(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function main(): Promise<void> {
  const transport = createGrpcTransport({ baseUrl });
  const ingest = createClient(IngestService, transport);
  const decisions = createClient(DecisionService, transport);

  // Three views of phones over the last three minutes. Event ids are the
  // idempotency keys: re-sending the same ids is reported DUPLICATE.
  const now = Date.now();
  const events: Event[] = [0, 1, 2].map((i) =>
    create(EventSchema, {
      eventId: `${user}-view-${i + 1}`,
      userId: user,
      type: "view",
      category: "phones",
      itemId: `phone-${i + 1}`,
      occurredAt: timestampFromMs(now - (3 - i) * 60_000),
      attributes: tz ? { tz } : {},
    }),
  );
  const pub = await ingest.publish({ events }, { timeoutMs });
  let rejected = 0;
  for (const r of pub.results) {
    emit({
      rpc: "Publish",
      user_id: user,
      event_id: r.eventId,
      status: EventStatus[r.status],
      ...(r.reason ? { reason: r.reason } : {}),
      profile_version: r.profileVersion.toString(),
    });
    if (r.status === EventStatus.REJECTED) rejected++;
  }
  for (const a of pub.actions) {
    emit({
      rpc: "Publish",
      user_id: user,
      action_id: a.actionId,
      trigger_id: a.triggerId,
      channel: a.channel,
      template: a.template,
    });
  }
  if (rejected > 0) {
    throw new Error(`${rejected} event(s) rejected`);
  }

  for (const channel of ["web", "sms"]) {
    const res = await decisions.getDecision(
      { userId: user, channel, placement: "home" },
      { timeoutMs },
    );
    const d = res.decision;
    if (!d) throw new Error(`GetDecision(${channel}): no decision in the answer`);
    emit({
      rpc: "GetDecision",
      user_id: user,
      channel,
      verdict: Verdict[d.verdict],
      offer_id: d.offer?.id ?? "",
      template: d.offer?.template ?? "",
      payload: d.offer?.payload ?? {},
      ...(d.notBefore ? { not_before: new Date(Number(d.notBefore.seconds) * 1000).toISOString() } : {}),
      reasons: d.reasons.map((r) => `${r.ruleId}: ${r.message}`),
      degraded: d.degraded,
      decision_id: d.decisionId,
      profile_version: res.profileVersion.toString(),
    });
  }
}

main().catch((err: unknown) => {
  const e = ConnectError.from(err);
  const hint = e.code === Code.Unavailable ? ` (is nudged listening on ${addr}?)` : "";
  process.stderr.write(`storefront: ${e.message}${hint}\n`);
  process.exit(1);
});

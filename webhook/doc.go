// Package webhook delivers the outbox's actions to HTTP endpoints, at least
// once: every configured webhook is a consumer group of its own
// (GroupPrefix + name) read through package delivery, so a webhook gets
// every action, whatever other webhooks and ActionService subscribers do.
//
// What it owns:
//
//   - config.go: Config, one webhook, its defaults and Validate;
//   - sign.go: the X-Nudge-Signature header (Sign, Verify), which a
//     receiver checks against the exact body;
//   - policy.go: the pure policy: which responses succeed, which are
//     retried at once and which wait for redelivery (Classify), the
//     jittered exponential backoff (Backoff), the channel filter;
//   - webhook.go: the Dispatcher, which runs every webhook's loop: read
//     from the group, POST, acknowledge on a 2xx only;
//   - metrics.go: nudge.webhook.* figures, per webhook.
//
// Delivery model. Each delivery of an outbox entry to the webhook's group
// (delivery.Outbox.Read, a new action or one claimed after the visibility
// timeout) is a lease of Options.Visibility. Within a lease the entry is
// POSTed and, after a retryable failure (a 5xx, 408, 429, a timeout, a
// connection error), POSTed again after a jittered exponential backoff
// while the next attempt can still end inside the lease. Then the entry is
// left pending: delivery claims it again after the visibility timeout, on
// this nudged or another, and after the outbox's maximum deliveries moves
// it to the dead-letter stream. A 2xx acknowledges the entry; nothing else
// does, except the channel filter and Config.MaxAge, which acknowledge
// without sending. A 4xx other than 408 and 429, and a 3xx (redirects are
// not followed), end the lease's attempts at once: the receiver refused
// the request and an immediate retry would be refused too; the entry comes
// back once per visibility timeout until it is dead-lettered, which gives
// an operator that long to fix the receiver.
//
// Concurrency: a Dispatcher's Run starts one reading goroutine per webhook
// and one goroutine per action it holds (at most 4 × MaxInFlight plus one
// read), of which at most MaxInFlight have a request in flight; Run
// returns once every one of them has ended. It is meant to be run once.
package webhook

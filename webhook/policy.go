package webhook

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Outcome is what the result of one attempt calls for.
type Outcome int

const (
	// Delivered: a 2xx. The action is acknowledged.
	Delivered Outcome = iota
	// Retry: a 5xx, 408, 429, a timeout or a connection error, which may
	// pass. The action is tried again after a backoff, within its lease,
	// else at its redelivery.
	Retry
	// Refused: a 4xx other than 408 and 429, or a 3xx (redirects are not
	// followed): the receiver refused this request and would refuse it
	// again now. No more attempts within the lease: the action waits for
	// its redelivery, and goes to the dead-letter stream after the
	// maximum deliveries unless the receiver is fixed meanwhile.
	Refused
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Refused:
		return "refused"
	}
	return "unknown"
}

// The reasons of a failed attempt, the reason attribute of
// nudge.webhook.failed.
const (
	ReasonTimeout    = "timeout"    // no complete response within Config.Timeout
	ReasonConnection = "connection" // refused, reset, DNS, TLS: no response
	Reason3xx        = "http_3xx"
	Reason4xx        = "http_4xx"
	Reason5xx        = "http_5xx"
	ReasonOther      = "http_other" // a status outside 200-599
)

// Classify tells what an attempt's result calls for, and for a failure
// its reason. err is the transport's error (nil when a response came, with
// status), timedOut whether it is the attempt's timeout.
func Classify(status int, err error, timedOut bool) (Outcome, string) {
	switch {
	case err != nil && timedOut:
		return Retry, ReasonTimeout
	case err != nil:
		return Retry, ReasonConnection
	case status >= 200 && status < 300:
		return Delivered, ""
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests:
		return Retry, Reason4xx
	case status >= 300 && status < 400:
		return Refused, Reason3xx
	case status >= 400 && status < 500:
		return Refused, Reason4xx
	case status >= 500 && status < 600:
		return Retry, Reason5xx
	}
	return Retry, ReasonOther
}

// Backoff is the wait between two attempts of one action: exponential
// from Min, doubling with each failed attempt up to Max, with jitter so
// that actions that failed together (a receiver's outage) do not all come
// back at once.
type Backoff struct {
	Min, Max time.Duration
}

// Delay returns the wait after the n-th failed attempt (n ≥ 1): d =
// Min·2^(n-1), at most Max, less a random share of up to half: the wait
// is in [d/2, d], d/2 + u·d/2 for u, a uniform draw in [0, 1).
func (b Backoff) Delay(n int, u float64) time.Duration {
	d := b.Min
	if d <= 0 {
		return 0
	}
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	u = min(max(u, 0), 1)
	return d/2 + time.Duration(u*float64(d/2))
}

// retryAfter reads a Retry-After header (delay-seconds or an HTTP date,
// RFC 9110 §10.2.3) at now; false when there is none that parses.
func retryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if s, err := strconv.ParseUint(h, 10, 32); err == nil {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// wants says whether a webhook listening on channels (empty: all) takes
// an action on channel.
func wants(channels []string, channel string) bool {
	return len(channels) == 0 || slices.Contains(channels, channel)
}

// entryTime is when an outbox entry was added, from its ack id
// ("<bucket>/<ms>-<seq>", see delivery.Delivery.AckID): stream ids start
// with Redis's clock in milliseconds. False for an id of another shape.
func entryTime(ackID string) (time.Time, bool) {
	_, id, ok := strings.Cut(ackID, "/")
	if !ok {
		return time.Time{}, false
	}
	msPart, _, ok := strings.Cut(id, "-")
	if !ok {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(msPart, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// expired says whether an action is past maxAge at now (never when maxAge
// is 0 or its age is unknown).
func expired(ackID string, maxAge time.Duration, now time.Time) bool {
	if maxAge <= 0 {
		return false
	}
	at, ok := entryTime(ackID)
	return ok && now.Sub(at) > maxAge
}

package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/version"
)

// Outbox is what a Dispatcher needs of the outbox: delivery.Outbox.
type Outbox interface {
	// Read returns the group's next deliveries for the member: actions
	// left unacknowledged past the visibility timeout, then new ones; it
	// dead-letters those past the maximum deliveries.
	Read(ctx context.Context, group, consumer string) ([]delivery.Delivery, error)
	// AckRead acknowledges deliveries Read returned.
	AckRead(ctx context.Context, group string, ackIDs []string) (int, error)
	// Release hands the member's unacknowledged deliveries back to the
	// group at once.
	Release(ctx context.Context, group, consumer string, sent []string) (int, error)
}

var _ Outbox = (*delivery.Outbox)(nil)

// Options configure a Dispatcher. The zero value of a field means its
// default.
type Options struct {
	// Visibility is the outbox's visibility timeout
	// (delivery.Options.Visibility): a delivery is this member's for that
	// long, after which the group delivers it again. Attempts within a
	// delivery stop in time to end inside it. Default 30s.
	Visibility time.Duration
	// MaxDeliveries is the outbox's (delivery.Options.MaxDeliveries), for
	// the logs. Default 5.
	MaxDeliveries int
	// Consumer is this process's member name in every webhook's group,
	// unique among the processes sharing the outbox. Default
	// "<hostname>-<pid>".
	Consumer string
	// Transport sends the requests. Default: a copy of
	// http.DefaultTransport per webhook (proxies from the environment),
	// keeping up to MaxInFlight idle connections.
	Transport http.RoundTripper
	// UserAgent of the requests. Default "nudge-webhook (<nudged's
	// version>)".
	UserAgent string
	// Meter receives the nudge.webhook.* metrics. Default: none.
	Meter metric.Meter
	// Logger receives the logs. Default: none.
	Logger *slog.Logger
}

// Tuning that is not worth a setting.
const (
	// heldPerSlot × MaxInFlight bounds the actions a webhook holds (in a
	// request, waiting for one, or between attempts) before it reads more:
	// room for retries to wait without stalling the others, and few enough
	// that an action rarely waits for a slot past its visibility timeout.
	heldPerSlot = 4
	// ackTimeout bounds acknowledging an accepted action, retried twice.
	ackTimeout = 5 * time.Second
	// releaseTimeout bounds handing the held actions back at stop.
	releaseTimeout = 5 * time.Second
	// maxDrain is the most of a response body read (and dropped), so
	// that its connection can serve the next request.
	maxDrain = 64 << 10
	// warnEvery spaces the warnings about failing requests of a webhook.
	warnEvery = 10 * time.Second
)

// readBackoff paces the reads of the outbox while Redis fails.
var readBackoff = Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// Dispatcher runs the webhooks.
type Dispatcher struct {
	hooks []*hook
}

// New returns a Dispatcher of the webhooks in hooks, reading out. It fails
// with an error wrapping ErrInvalidConfig for a webhook that does not
// validate, for two with one name, and for a Timeout not shorter than the
// visibility timeout (an attempt would outlast its delivery).
func New(out Outbox, hooks []Config, opt Options) (*Dispatcher, error) {
	d := delivery.DefaultOptions()
	if opt.Visibility <= 0 {
		opt.Visibility = d.Visibility
	}
	if opt.MaxDeliveries <= 0 {
		opt.MaxDeliveries = d.MaxDeliveries
	}
	if opt.Consumer == "" {
		opt.Consumer = defaultConsumer()
	}
	if opt.UserAgent == "" {
		opt.UserAgent = "nudge-webhook (" + version.String("nudged") + ")"
	}
	if opt.Meter == nil {
		opt.Meter = noop.NewMeterProvider().Meter("")
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	in, err := newInstruments(opt.Meter)
	if err != nil {
		return nil, fmt.Errorf("webhook: metrics: %w", err)
	}
	names := make(map[string]bool, len(hooks))
	disp := &Dispatcher{}
	for _, c := range hooks {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("webhook %q: %w", c.Name, err)
		}
		if names[c.Name] {
			return nil, fmt.Errorf("webhook %q: %w", c.Name, &ConfigError{Field: "name", Problem: "used twice"})
		}
		names[c.Name] = true
		c = c.withDefaults()
		if c.Timeout >= opt.Visibility {
			return nil, fmt.Errorf("webhook %q: %w", c.Name, &ConfigError{Field: "timeout", Problem: fmt.Sprintf(
				"%v is not shorter than the visibility timeout %v: an attempt would outlast its delivery", c.Timeout, opt.Visibility)})
		}
		disp.hooks = append(disp.hooks, newHook(out, c, &opt, in))
	}
	return disp, nil
}

// defaultConsumer names this process: the host name (a pod's name) and
// the process id.
func defaultConsumer() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "nudged"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// Run delivers until ctx ends, then stops: no new request starts, the
// requests in flight finish (within their timeout) and their actions are
// acknowledged on a 2xx, and the actions held without a success are
// handed back to their groups at once (delivery.Outbox.Release) for
// another nudged, or this one's next start, to deliver. It returns nil
// once every goroutine it started has ended.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, h := range d.hooks {
		h.log.Info("webhook delivering", "url", redactURL(h.cfg.URL), "group", h.group, "consumer", h.opt.Consumer, "channels", h.cfg.Channels)
		if u, err := url.Parse(h.cfg.URL); err == nil && u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			h.log.Warn("webhook URL is plain http beyond this machine: actions (user ids, payloads) travel unencrypted; the signature only proves who sent them", "url", redactURL(h.cfg.URL))
		}
		wg.Go(func() { h.run(ctx) })
	}
	wg.Wait()
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hook is one webhook's loop and state.
type hook struct {
	cfg     Config
	group   string
	secret  []byte
	out     Outbox
	opt     *Options
	client  *http.Client
	backoff Backoff
	m       hookMetrics
	log     *slog.Logger
	slots   chan struct{} // a token per request in flight
	maxHeld int
	room    chan struct{} // signalled when a held action is let go

	mu       sync.Mutex
	held     map[string]*lease        // by ack id
	attempts map[string]attemptRecord // by ack id: attempts made by this process
	swept    time.Time                // last sweep of attempts

	warnMu    sync.Mutex
	lastWarn  time.Time
	sinceWarn int // failures since lastWarn
}

// lease is an action held by this member: read from the group, not yet
// acknowledged or let go.
type lease struct {
	d   delivery.Delivery // Count is the group's delivery count
	end time.Time         // the delivery's visibility ends; guarded by hook.mu
}

// attemptRecord is the last attempt number this process gave an action,
// so that attempts go on counting over its redeliveries.
type attemptRecord struct {
	n  int
	at time.Time
}

func newHook(out Outbox, c Config, opt *Options, in *instruments) *hook {
	tr := opt.Transport
	if tr == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = c.MaxInFlight
		tr = t
	}
	return &hook{
		cfg: c, group: c.Group(), secret: []byte(c.Secret), out: out, opt: opt,
		client: &http.Client{
			Transport: tr,
			// A redirect is the receiver's configuration to fix, not a
			// place to send signed actions to: the 3xx is the answer.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		backoff:  Backoff{Min: c.BackoffMin, Max: c.BackoffMax},
		m:        in.forHook(c.Name),
		log:      opt.Logger.With("webhook", c.Name),
		slots:    make(chan struct{}, c.MaxInFlight),
		maxHeld:  heldPerSlot * c.MaxInFlight,
		room:     make(chan struct{}, 1),
		held:     map[string]*lease{},
		attempts: map[string]attemptRecord{},
	}
}

// run reads the webhook's group until ctx ends, one goroutine per action
// held, then waits for them, hands back what is still held, and closes
// the idle connections.
func (h *hook) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		h.release(ctx)
		h.client.CloseIdleConnections()
	}()
	failures := 0
	for h.waitForRoom(ctx) {
		// The visibility of what the read returns starts no earlier than
		// now: leases computed from here end in time.
		start := time.Now()
		ds, err := h.out.Read(ctx, h.group, h.opt.Consumer)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait := readBackoff.Delay(failures, rand.Float64())
			h.log.Warn("reading the outbox failed; retrying", "group", h.group, "retry_in", wait, "err", err)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		failures = 0
		h.take(ctx, &wg, ds, start)
		h.sweep(start)
	}
}

// waitForRoom waits until the webhook holds fewer than maxHeld actions;
// false when ctx ended first.
func (h *hook) waitForRoom(ctx context.Context) bool {
	for {
		h.mu.Lock()
		n := len(h.held)
		h.mu.Unlock()
		if n < h.maxHeld {
			return ctx.Err() == nil
		}
		select {
		case <-h.room:
		case <-ctx.Done():
			return false
		}
	}
}

// take starts the delivery of what a read returned, and acknowledges at
// once what the webhook does not take (other channels, past MaxAge).
func (h *hook) take(ctx context.Context, wg *sync.WaitGroup, ds []delivery.Delivery, readAt time.Time) {
	var skipped []string
	filtered, old := 0, 0
	for _, d := range ds {
		switch {
		case !wants(h.cfg.Channels, d.Action.Channel):
			skipped = append(skipped, d.AckID)
			filtered++
		case expired(d.AckID, h.cfg.MaxAge, readAt):
			skipped = append(skipped, d.AckID)
			old++
		default:
			if l := h.hold(d, readAt); l != nil {
				wg.Go(func() { h.deliver(ctx, l) })
			}
		}
	}
	if len(skipped) == 0 {
		return
	}
	if _, err := h.out.AckRead(ctx, h.group, skipped); err != nil {
		if ctx.Err() == nil {
			h.log.Warn("acknowledging actions the webhook does not take failed: they come back after the visibility timeout and are dropped then",
				"actions", len(skipped), "err", err)
		}
		return
	}
	h.m.filtered(ctx, filtered)
	h.m.expired(ctx, old)
}

// hold records a delivery as held and returns its lease, or nil when it
// is held already: this member claimed it again (its previous visibility
// ran out while it waited for a slot or a backoff), and the attempts
// under way go on with the new visibility.
func (h *hook) hold(d delivery.Delivery, readAt time.Time) *lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	end := readAt.Add(h.opt.Visibility)
	if l, ok := h.held[d.AckID]; ok {
		l.end, l.d.Count = end, d.Count
		return nil
	}
	l := &lease{d: d, end: end}
	h.held[d.AckID] = l
	return l
}

// letGo forgets a held action (acknowledged, or left pending for its
// redelivery) and makes room for reads.
func (h *hook) letGo(l *lease) {
	h.mu.Lock()
	delete(h.held, l.d.AckID)
	h.mu.Unlock()
	select {
	case h.room <- struct{}{}:
	default:
	}
}

// leaseEnd is when the visibility of a held action ends.
func (h *hook) leaseEnd(l *lease) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return l.end
}

// nextAttempt numbers the next attempt of a held action: one more than
// this process's last attempt of it, and at least the group's delivery
// count (after a restart, or when another nudged made the earlier ones).
func (h *hook) nextAttempt(l *lease, now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := max(h.attempts[l.d.AckID].n+1, int(l.d.Count), 1)
	h.attempts[l.d.AckID] = attemptRecord{n: n, at: now}
	return n
}

// sweep forgets, at most once per visibility timeout, the attempt numbers
// of actions this process has not tried for three visibility timeouts:
// another nudged has them, or they are dead-lettered.
func (h *hook) sweep(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.swept) < h.opt.Visibility {
		return
	}
	h.swept = now
	for id, r := range h.attempts {
		if _, held := h.held[id]; !held && now.Sub(r.at) > 3*h.opt.Visibility {
			delete(h.attempts, id)
		}
	}
}

// deliver makes the attempts of one held action within its visibility,
// and acknowledges it on a 2xx; otherwise it is left pending for the group
// to deliver again.
func (h *hook) deliver(ctx context.Context, l *lease) {
	defer h.letGo(l)
	body, err := encodeAction(&l.d.Action)
	if err != nil {
		// Not expected of a decoded action; left pending, it ends in the
		// dead-letter stream.
		h.log.Error("encoding an action failed", "delivery", l.d.AckID, "err", err)
		return
	}
	sig := Sign(h.secret, body)
	for ctx.Err() == nil {
		select {
		case h.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if ctx.Err() != nil { // both were ready: select chose at random
			<-h.slots
			return
		}
		n := h.nextAttempt(l, time.Now())
		res := h.post(ctx, body, sig, l.d.AckID, n)
		<-h.slots
		outcome, reason := Classify(res.status, res.err, res.timedOut)
		if outcome == Delivered {
			h.m.delivered(ctx)
			h.ack(ctx, l)
			return
		}
		h.m.failed(ctx, reason)
		h.failed(l, n, res, reason, outcome)
		if outcome == Refused || ctx.Err() != nil {
			return
		}
		wait := h.backoff.Delay(n, rand.Float64())
		if res.retryAfter > 0 {
			wait = max(wait, min(res.retryAfter, h.cfg.BackoffMax))
		}
		if time.Now().Add(wait + h.cfg.Timeout).After(h.leaseEnd(l)) {
			return // the next attempt is the redelivery's
		}
		if !sleep(ctx, wait) {
			return
		}
	}
}

// result is what one attempt got.
type result struct {
	status     int // 0 without a response
	err        error
	timedOut   bool
	retryAfter time.Duration // the response's Retry-After, 0 without one
}

// post makes one attempt. It runs to its end (Timeout at most) even when
// ctx ends meanwhile: a request cut short would be sent again, and
// finishing it is the graceful stop.
func (h *hook) post(ctx context.Context, body []byte, sig, deliveryID string, attempt int) result {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return result{err: err} // the URL was validated: not expected
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", h.opt.UserAgent)
	req.Header.Set(HeaderSignature, sig)
	req.Header.Set(HeaderDelivery, deliveryID)
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	h.m.inFlight(ctx, 1)
	defer h.m.inFlight(ctx, -1)
	start := time.Now()
	defer func() { h.m.latency(ctx, time.Since(start)) }()
	resp, err := h.client.Do(req)
	if err != nil {
		var ne net.Error
		timedOut := errors.Is(rctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
		return result{err: err, timedOut: timedOut}
	}
	defer resp.Body.Close()
	// Read so the connection serves the next request; a body cut short
	// does not change the answer, which is the status.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	r := result{status: resp.StatusCode}
	if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		r.retryAfter = d
	}
	return r
}

// ack acknowledges an accepted action for the group, even while stopping,
// trying three times: an action accepted and not acknowledged is sent
// again.
func (h *hook) ack(ctx context.Context, l *lease) {
	h.mu.Lock()
	delete(h.attempts, l.d.AckID)
	h.mu.Unlock()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	for i := 0; ; i++ {
		_, err := h.out.AckRead(actx, h.group, []string{l.d.AckID})
		if err == nil {
			return
		}
		if i == 2 || !sleep(actx, 100*time.Millisecond<<i) {
			h.log.Warn("acknowledging a delivered action failed: it will be delivered again", "delivery", l.d.AckID, "err", err)
			return
		}
	}
}

// failed logs a failed attempt: at debug level each, and a warning at most
// every warnEvery per webhook with the count since the last one.
func (h *hook) failed(l *lease, attempt int, r result, reason string, outcome Outcome) {
	last := int(l.d.Count) >= h.opt.MaxDeliveries
	h.log.Debug("webhook attempt failed", "delivery", l.d.AckID, "attempt", attempt, "delivery_count", l.d.Count,
		"reason", reason, "status", r.status, "err", r.err, "outcome", outcome, "last_delivery", last)
	now := time.Now()
	h.warnMu.Lock()
	h.sinceWarn++
	if now.Sub(h.lastWarn) < warnEvery {
		h.warnMu.Unlock()
		return
	}
	n := h.sinceWarn
	h.sinceWarn, h.lastWarn = 0, now
	h.warnMu.Unlock()
	h.log.Warn("webhook requests failing: actions are retried, and dead-lettered after the maximum deliveries",
		"failures", n, "reason", reason, "status", r.status, "err", r.err, "max_deliveries", h.opt.MaxDeliveries)
}

// release hands the actions still pending for this member back to the
// group at once, rather than after the visibility timeout. A failure
// leaves them to the timeout: nothing is lost either way.
func (h *hook) release(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	n, err := h.out.Release(rctx, h.group, h.opt.Consumer, nil)
	switch {
	case err != nil:
		h.log.Warn("handing unacknowledged actions back failed: they are delivered again after the visibility timeout", "group", h.group, "err", err)
	case n > 0:
		h.log.Info("handed unacknowledged actions back to the group", "group", h.group, "actions", n)
	}
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

package webhook_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/webhook"
)

const secret = "test-secret-0123456789"

// layout is the tests' outbox: 4 buckets.
var layout = redisstore.NewLayout(4)

// addActions writes n actions to the outbox as the store does, channel(i)
// giving each its channel, with ids from id(i) ("*" for Redis's clock),
// and returns their ack ids (the deliveries' ids) and action ids.
func addActions(t *testing.T, rdb redis.UniversalClient, n int, channel func(int) string, id func(int) string) (ackIDs, actionIDs []string) {
	t.Helper()
	for i := range n {
		a := profile.Action{
			ID: fmt.Sprintf("a_%d", i), UserID: fmt.Sprintf("u%d", i), TriggerID: "t", Channel: channel(i), Template: "tpl",
			Payload: map[string]string{"i": strconv.Itoa(i)}, TriggeredAt: time.Now(), EventID: fmt.Sprintf("e%d", i),
		}
		b := i % layout.Buckets()
		entry := "*"
		if id != nil {
			entry = id(i)
		}
		got, err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: layout.OutboxKey(b), ID: entry, Values: redisstore.ActionFields(&a)}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ackIDs = append(ackIDs, strconv.Itoa(b)+"/"+got)
		actionIDs = append(actionIDs, a.ID)
	}
	return ackIDs, actionIDs
}

// receiver is the webhook's HTTP endpoint: it checks every request and
// records what came, and answers with the status respond returns (0: no
// answer, respond cut the connection or outwaited the client).
type receiver struct {
	t       *testing.T
	respond func(w http.ResponseWriter, r *http.Request, id string, attempt int) int

	mu       sync.Mutex
	attempts map[string][]int  // delivery id -> X-Nudge-Attempt, in order of arrival
	accepted map[string]int    // delivery id -> requests answered 2xx
	actions  map[string]string // delivery id -> action id of the body
	inFlight int
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, id string, attempt int) int) (*receiver, *httptest.Server) {
	rc := &receiver{t: t, respond: respond, attempts: map[string][]int{}, accepted: map[string]int{}, actions: map[string]string{}}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return rc, srv
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		rc.t.Errorf("reading a request: %v", err)
		return
	}
	id, attempt := r.Header.Get(webhook.HeaderDelivery), r.Header.Get(webhook.HeaderAttempt)
	n, err := strconv.Atoi(attempt)
	switch {
	case r.Method != http.MethodPost:
		rc.t.Errorf("method %s", r.Method)
	case r.Header.Get("Content-Type") != "application/json":
		rc.t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
	case !strings.HasPrefix(r.Header.Get("User-Agent"), "nudge-webhook (nudged "):
		rc.t.Errorf("User-Agent %q", r.Header.Get("User-Agent"))
	case !webhook.Verify([]byte(secret), body, r.Header.Get(webhook.HeaderSignature)):
		rc.t.Errorf("delivery %s attempt %s: signature %q does not verify", id, attempt, r.Header.Get(webhook.HeaderSignature))
	case err != nil || n < 1:
		rc.t.Errorf("delivery %s: attempt %q", id, attempt)
	}
	var a nudgev1.Action
	if err := protojson.Unmarshal(body, &a); err != nil {
		rc.t.Errorf("body %s: %v", body, err)
	}
	rc.mu.Lock()
	rc.attempts[id] = append(rc.attempts[id], n)
	if prev, ok := rc.actions[id]; ok && prev != a.GetActionId() {
		rc.t.Errorf("delivery %s carried action %s, then %s", id, prev, a.GetActionId())
	}
	rc.actions[id] = a.GetActionId()
	rc.inFlight++
	rc.mu.Unlock()
	status := rc.respond(w, r, id, n)
	if status != 0 {
		w.WriteHeader(status)
	}
	rc.mu.Lock()
	rc.inFlight--
	if status/100 == 2 && r.Context().Err() == nil {
		rc.accepted[id]++
	}
	rc.mu.Unlock()
}

func (rc *receiver) snapshot() (accepted map[string]int, attempts map[string][]int, inFlight int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	accepted, attempts = make(map[string]int), make(map[string][]int)
	for k, v := range rc.accepted {
		accepted[k] = v
	}
	for k, v := range rc.attempts {
		attempts[k] = slices.Clone(v)
	}
	return accepted, attempts, rc.inFlight
}

// waitFor polls cond until it holds or 30s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// backlog is what the group has left: pending and undelivered.
func backlog(t *testing.T, out *delivery.Outbox, group string) delivery.Backlog {
	t.Helper()
	groups, err := out.Groups(t.Context(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if g.Name == group {
			return g.Backlog
		}
	}
	return delivery.Backlog{Undelivered: -1} // not created yet
}

// metrics reads the nudge.webhook.* figures.
type metrics struct {
	reader *sdkmetric.ManualReader
}

func newMetrics() (metrics, webhook.Options) {
	r := sdkmetric.NewManualReader()
	return metrics{r}, webhook.Options{Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)).Meter("test")}
}

// sum is the value of a counter for the attributes (key=value), or the
// count of a histogram.
func (m metrics) sum(t *testing.T, name string, attrs ...string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	match := func(set attribute.Set) bool {
		for _, kv := range attrs {
			k, v, _ := strings.Cut(kv, "=")
			if got, ok := set.Value(attribute.Key(k)); !ok || got.AsString() != v {
				return false
			}
		}
		return true
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, mm := range sm.Metrics {
			if mm.Name != name {
				continue
			}
			switch d := mm.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						n += p.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						n += int64(p.Count)
					}
				}
			}
		}
	}
	return n
}

// run runs d until the test ends (or stop is called) and checks that no
// goroutine of it is left.
func run(t *testing.T, d *webhook.Dispatcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return within 30s of its context's end")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newOutbox(rdb redis.UniversalClient, visibility time.Duration) *delivery.Outbox {
	return delivery.New(rdb, layout, delivery.Options{Visibility: visibility, MaxDeliveries: 3, Block: 50 * time.Millisecond})
}

// Every action of the webhook's channel is POSTed once, signed, with the
// API's JSON, and acknowledged; the other channels' actions are
// acknowledged for its group without a request; nothing is left pending.
func TestDeliversEachActionSignedAndFiltersChannels(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	rc, srv := newReceiver(t, func(http.ResponseWriter, *http.Request, string, int) int { return http.StatusNoContent })
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ackIDs, actionIDs := addActions(t, rdb, 40, func(i int) string { return []string{"sms", "push"}[i%2] }, nil)
	out := newOutbox(rdb, 30*time.Second)
	m, opt := newMetrics()
	opt.Visibility, opt.Consumer = 30*time.Second, "member-1"
	d, err := webhook.New(out, []webhook.Config{{Name: "sms", URL: srv.URL + "/hook", Secret: secret, Channels: []string{"sms"}}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, d)
	waitFor(t, "every action acknowledged", func() bool {
		b := backlog(t, out, "webhook-sms")
		return b.Pending == 0 && b.Undelivered == 0
	})
	stop()

	accepted, attempts, _ := rc.snapshot()
	for i, id := range ackIDs {
		switch {
		case i%2 == 1 && len(attempts[id]) > 0:
			t.Errorf("push action %s was sent to the sms webhook", id)
		case i%2 == 0 && (accepted[id] != 1 || !slices.Equal(attempts[id], []int{1})):
			t.Errorf("sms action %s: accepted %d times, attempts %v; want once, attempt 1", id, accepted[id], attempts[id])
		case i%2 == 0 && rc.actions[id] != actionIDs[i]:
			t.Errorf("delivery %s carried action %s, want %s", id, rc.actions[id], actionIDs[i])
		}
	}
	if len(accepted) != 20 {
		t.Errorf("%d deliveries accepted, want 20", len(accepted))
	}
	for _, c := range []struct {
		name  string
		attrs []string
		want  int64
	}{
		{"nudge.webhook.delivered", []string{"webhook=sms"}, 20},
		{"nudge.webhook.filtered", []string{"webhook=sms"}, 20},
		{"nudge.webhook.failed", nil, 0},
		{"nudge.webhook.latency", []string{"webhook=sms"}, 20},
		{"nudge.webhook.in_flight", []string{"webhook=sms"}, 0},
	} {
		if got := m.sum(t, c.name, c.attrs...); got != c.want {
			t.Errorf("%s%v = %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
}

// A failed first attempt (500, 429, a timeout, a cut connection) is
// retried after a backoff within the delivery, with X-Nudge-Attempt 2,
// and the action acknowledged once accepted.
func TestRetriesFailuresWithinTheDelivery(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	const n = 24
	kind := func(id string) int { // the same failure for a delivery on every attempt 1
		h := 0
		for _, c := range id {
			h = h*31 + int(c)
		}
		return (h%4 + 4) % 4
	}
	rc, srv := newReceiver(t, func(w http.ResponseWriter, r *http.Request, id string, attempt int) int {
		if attempt > 1 {
			return http.StatusOK
		}
		switch kind(id) {
		case 0:
			return http.StatusInternalServerError
		case 1:
			w.Header().Set("Retry-After", "0")
			return http.StatusTooManyRequests
		case 2:
			<-r.Context().Done() // past the webhook's timeout
		case 3:
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return http.StatusOK
			}
			_ = c.Close() // the connection cut without a response
		}
		return 0
	})
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ackIDs, _ := addActions(t, rdb, n, func(int) string { return "email" }, nil)
	out := newOutbox(rdb, 10*time.Second)
	m, opt := newMetrics()
	opt.Visibility = 10 * time.Second
	d, err := webhook.New(out, []webhook.Config{{
		Name: "flaky", URL: srv.URL, Secret: secret, Timeout: 200 * time.Millisecond, MaxInFlight: 4,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
	}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, d)
	waitFor(t, "every action acknowledged", func() bool {
		b := backlog(t, out, "webhook-flaky")
		return b.Pending == 0 && b.Undelivered == 0
	})
	stop()

	accepted, attempts, _ := rc.snapshot()
	want := map[string]int64{}
	for _, id := range ackIDs {
		if accepted[id] != 1 || !slices.Equal(attempts[id], []int{1, 2}) {
			t.Errorf("delivery %s: accepted %d times, attempts %v; want once, attempts [1 2]", id, accepted[id], attempts[id])
		}
		want[[]string{webhook.Reason5xx, webhook.Reason4xx, webhook.ReasonTimeout, webhook.ReasonConnection}[kind(id)]]++
	}
	for reason, w := range want {
		if got := m.sum(t, "nudge.webhook.failed", "webhook=flaky", "reason="+reason); got != w {
			t.Errorf("failed{reason=%s} = %d, want %d", reason, got, w)
		}
	}
	if got := m.sum(t, "nudge.webhook.delivered", "webhook=flaky"); got != n {
		t.Errorf("delivered = %d, want %d", got, n)
	}
}

// A receiver that keeps failing gets each action once per delivery for a
// refusal (4xx), or several times per delivery for an error (5xx), with
// growing attempt numbers, until the outbox dead-letters the action after
// its maximum deliveries (3 here); nothing is left pending.
func TestFailingReceiverEndsInTheDeadLetterStream(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		exact  bool // one attempt per delivery
	}{
		{name: "refused", status: http.StatusBadRequest, exact: true},
		{name: "server error", status: http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := redistest.Start(t).Client(t)
			rc, srv := newReceiver(t, func(http.ResponseWriter, *http.Request, string, int) int { return tc.status })
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			ackIDs, _ := addActions(t, rdb, 8, func(int) string { return "sms" }, nil)
			const visibility = 600 * time.Millisecond
			out := newOutbox(rdb, visibility)
			_, opt := newMetrics()
			opt.Visibility = visibility
			d, err := webhook.New(out, []webhook.Config{{
				Name: "down", URL: srv.URL, Secret: secret, Timeout: 100 * time.Millisecond,
				BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
			}}, opt)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, d)
			var dead []delivery.DeadEntry
			waitFor(t, "every action dead-lettered", func() bool {
				dead, err = out.DeadAfter(t.Context(), "", 100)
				if err != nil {
					t.Fatal(err)
				}
				b := backlog(t, out, "webhook-down")
				return len(dead) == len(ackIDs) && b.Pending == 0 && b.Undelivered == 0
			})
			stop()
			for _, e := range dead {
				if e.Group != "webhook-down" || e.DeliveryCount != 3 {
					t.Errorf("dead letter of group %q after %d deliveries, want webhook-down after 3", e.Group, e.DeliveryCount)
				}
			}
			accepted, attempts, _ := rc.snapshot()
			if len(accepted) != 0 {
				t.Errorf("accepted %v", accepted)
			}
			for _, id := range ackIDs {
				got := attempts[id]
				want := make([]int, len(got))
				for i := range want {
					want[i] = i + 1
				}
				if !slices.Equal(got, want) || (tc.exact && len(got) != 3) || len(got) < 3 {
					t.Errorf("delivery %s: attempts %v; want 1, 2, 3%s", id, got, map[bool]string{true: "", false: ", ..."}[tc.exact])
				}
			}
		})
	}
}

// At stop, requests in flight finish and their actions are acknowledged;
// the actions held without an attempt are handed back at once, so that
// another member delivers them without waiting for the visibility
// timeout. Every action is accepted exactly once.
func TestStopFinishesRequestsAndHandsTheRestBack(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	hold := make(chan struct{})
	rc, srv := newReceiver(t, func(_ http.ResponseWriter, r *http.Request, _ string, _ int) int {
		select {
		case <-hold:
			return http.StatusOK
		case <-r.Context().Done():
			return 0
		}
	})
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ackIDs, _ := addActions(t, rdb, 30, func(int) string { return "sms" }, nil)
	const visibility = time.Minute // longer than the test: a redelivery must come from the release
	out := newOutbox(rdb, visibility)
	cfg := []webhook.Config{{Name: "slow", URL: srv.URL, Secret: secret, MaxInFlight: 2}}
	first, err := webhook.New(out, cfg, webhook.Options{Visibility: visibility, Consumer: "first"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstDone := make(chan error, 1)
	go func() { firstDone <- first.Run(ctx) }()
	waitFor(t, "2 requests in flight", func() bool { _, _, n := rc.snapshot(); return n == 2 })
	// The stop lets the requests in flight finish: the receiver answers
	// them after the stop began (and no new attempt may start once it
	// has), and they count as accepted only if the client was still
	// waiting.
	cancel()
	close(hold)
	select {
	case err := <-firstDone:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context's end")
	}
	accepted, _, _ := rc.snapshot()
	if len(accepted) != 2 {
		t.Fatalf("%d deliveries accepted by the stopped member, want its 2 requests in flight", len(accepted))
	}
	if b := backlog(t, out, "webhook-slow"); b.Pending == 0 || b.Pending+b.Undelivered != int64(len(ackIDs)-2) {
		t.Errorf("after the stop: %+v; want the %d others pending (held, handed back) or undelivered", b, len(ackIDs)-2)
	}

	second, err := webhook.New(out, cfg, webhook.Options{Visibility: visibility, Consumer: "second"})
	if err != nil {
		t.Fatal(err)
	}
	stopSecond := run(t, second)
	waitFor(t, "every action acknowledged", func() bool {
		b := backlog(t, out, "webhook-slow")
		return b.Pending == 0 && b.Undelivered == 0
	})
	stopSecond()
	accepted, _, _ = rc.snapshot()
	for _, id := range ackIDs {
		if accepted[id] != 1 {
			t.Errorf("delivery %s accepted %d times, want once", id, accepted[id])
		}
	}
}

// Actions older than max_age are acknowledged without a request.
func TestMaxAgeDropsOldActions(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	rc, srv := newReceiver(t, func(http.ResponseWriter, *http.Request, string, int) int { return http.StatusOK })
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	oldIDs, _ := addActions(t, rdb, 6, func(int) string { return "sms" }, func(i int) string { return fmt.Sprintf("%d-%d", old, i) })
	newIDs, _ := addActions(t, rdb, 6, func(int) string { return "sms" }, nil)
	out := newOutbox(rdb, 30*time.Second)
	m, opt := newMetrics()
	opt.Visibility = 30 * time.Second
	d, err := webhook.New(out, []webhook.Config{{Name: "fresh", URL: srv.URL, Secret: secret, MaxAge: time.Hour}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, d)
	waitFor(t, "every action acknowledged", func() bool {
		b := backlog(t, out, "webhook-fresh")
		return b.Pending == 0 && b.Undelivered == 0
	})
	stop()
	accepted, _, _ := rc.snapshot()
	for _, id := range oldIDs {
		if accepted[id] != 0 {
			t.Errorf("old delivery %s was sent", id)
		}
	}
	for _, id := range newIDs {
		if accepted[id] != 1 {
			t.Errorf("new delivery %s accepted %d times", id, accepted[id])
		}
	}
	if got := m.sum(t, "nudge.webhook.expired", "webhook=fresh"); got != 6 {
		t.Errorf("expired = %d, want 6", got)
	}
}

package integration

import (
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/webhook"
)

// hookReceiver is a webhook's HTTP endpoint on loopback: it verifies
// every request (signature over the exact body, headers, the API's JSON)
// and records it, and answers as answer says: a status, or 0 to give no
// answer until the client gives up (a timeout).
type hookReceiver struct {
	t      *testing.T
	name   string
	secret []byte
	answer func(id string, attempt int) int

	mu       sync.Mutex
	attempts map[string][]int  // delivery id -> X-Nudge-Attempt values, in order of arrival
	accepted map[string]bool   // delivery ids answered 2xx
	actions  map[string]string // delivery id -> action id of the body
	verified int               // requests whose signature verified
}

func newHookReceiver(t *testing.T, name, secret string, answer func(id string, attempt int) int) (*hookReceiver, string) {
	rc := &hookReceiver{t: t, name: name, secret: []byte(secret), answer: answer,
		attempts: map[string][]int{}, accepted: map[string]bool{}, actions: map[string]string{}}
	srv := httptest.NewServer(rc) // 127.0.0.1
	t.Cleanup(srv.Close)
	return rc, srv.URL + "/nudge/" + name
}

func (rc *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		rc.t.Errorf("%s: reading a request: %v", rc.name, err)
		return
	}
	id := r.Header.Get(webhook.HeaderDelivery)
	attempt, err := strconv.Atoi(r.Header.Get(webhook.HeaderAttempt))
	if err != nil || attempt < 1 {
		rc.t.Errorf("%s: delivery %s: X-Nudge-Attempt %q", rc.name, id, r.Header.Get(webhook.HeaderAttempt))
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(r.Header.Get("User-Agent"), "nudge-webhook (nudged ") {
		rc.t.Errorf("%s: %s with Content-Type %q, User-Agent %q", rc.name, r.Method, r.Header.Get("Content-Type"), r.Header.Get("User-Agent"))
	}
	ok := webhook.Verify(rc.secret, body, r.Header.Get(webhook.HeaderSignature))
	if !ok {
		rc.t.Errorf("%s: delivery %s attempt %d: signature %q does not verify", rc.name, id, attempt, r.Header.Get(webhook.HeaderSignature))
	}
	var a nudgev1.Action
	if err := protojson.Unmarshal(body, &a); err != nil {
		rc.t.Errorf("%s: body %s: %v", rc.name, body, err)
	}
	rc.mu.Lock()
	if ok {
		rc.verified++
	}
	rc.attempts[id] = append(rc.attempts[id], attempt)
	rc.actions[id] = a.GetActionId()
	rc.mu.Unlock()

	status := rc.answer(id, attempt)
	if status == 0 {
		<-r.Context().Done() // past the webhook's timeout: the client gives up
		return
	}
	w.WriteHeader(status)
	if status/100 == 2 {
		rc.mu.Lock()
		rc.accepted[id] = true
		rc.mu.Unlock()
	}
}

func (rc *hookReceiver) snapshot() (accepted map[string]bool, attempts map[string][]int, actions map[string]string, verified int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	accepted, attempts, actions = map[string]bool{}, map[string][]int{}, map[string]string{}
	for k, v := range rc.accepted {
		accepted[k] = v
	}
	for k, v := range rc.attempts {
		attempts[k] = slices.Clone(v)
	}
	for k, v := range rc.actions {
		actions[k] = v
	}
	return accepted, attempts, actions, rc.verified
}

// firstAttemptFate is how the flaky receiver answers a delivery's first
// attempt, from a hash of its id: 30% a 500, 10% no answer (a timeout),
// the rest 200; later attempts always get 200.
func firstAttemptFate(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	switch v := h.Sum32() % 10; {
	case v < 3:
		return http.StatusInternalServerError
	case v == 3:
		return 0
	}
	return http.StatusOK
}

// The built nudged with three webhooks against a real Redis: "flaky"
// fails 30% of first attempts with a 500 and 10% with a timeout, and gets
// every action of the outbox (deduplicated on X-Nudge-Delivery), every
// request signed; "down" answers 500 to everything and its actions (the
// sms ones) end in the dead-letter stream after max_deliveries; "push"
// takes a channel no action is on and is never called. None of the three
// groups is left with a pending or undelivered action.
func TestWebhooksDeliverEveryActionAtLeastOnce(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	const secret, downSecret = "flaky-secret-0123456789", "down-secret-0123456789"
	flaky, flakyURL := newHookReceiver(t, "flaky", secret, func(id string, attempt int) int {
		if attempt > 1 {
			return http.StatusOK
		}
		return firstAttemptFate(id)
	})
	down, downURL := newHookReceiver(t, "down", downSecret, func(string, int) int { return http.StatusInternalServerError })
	push, pushURL := newHookReceiver(t, "push", secret, func(string, int) int { return http.StatusOK })

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "flaky.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const buckets, maxDeliveries = 16, 3
	config := fmt.Sprintf(`
buckets: %d
redis:
  addr: %s
delivery:
  visibility_timeout: 2s
  max_deliveries: %d
webhooks:
- name: flaky
  url: %s
  secret_file: %s
  timeout: 500ms
  max_in_flight: 8
  backoff_min: 20ms
  backoff_max: 200ms
- name: down
  url: %s
  channels: [sms]
  secret: %s
  timeout: 300ms
  backoff_min: 100ms
  backoff_max: 400ms
- name: push
  url: %s
  channels: [push]
  secret: %s
  timeout: 500ms
`, buckets, rs.Addr, maxDeliveries, flakyURL, secretFile, downURL, downSecret, pushURL, secret)
	configFile := filepath.Join(dir, "nudged.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNudged(t, bin, "--config", configFile, "--metrics-listen", "127.0.0.1:0")

	// 150 purchases of 300 (big-purchase-thanks: email) and 30 users
	// viewing phones 3 times (category-interest-coupon: sms).
	const emails, smses = 150, 30
	var events []*nudgev1.Event
	for i := range emails {
		e := ev(fmt.Sprintf("hook-buyer-%d", i), "purchase", "tv", time.Minute)
		e.Value = 300
		events = append(events, e)
	}
	for i := range smses {
		user := fmt.Sprintf("hook-viewer-%d", i)
		events = append(events, inDaytime(ev(user, "view", "phones", 3*time.Minute)), ev(user, "view", "phones", 2*time.Minute), ev(user, "view", "phones", time.Minute))
	}
	resp, err := nudgev1.NewIngestServiceClient(dial(t, n.addr)).Publish(ctxT(t), &nudgev1.PublishRequest{Events: events})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Actions) != emails+smses {
		t.Fatalf("%d actions triggered, want %d", len(resp.Actions), emails+smses)
	}

	// The outbox: every action, by delivery id ("<bucket>/<entry id>").
	layout := redisstore.NewLayout(buckets)
	bucketOf := map[string]int{}
	outbox := map[string]string{} // delivery id -> action id
	channel := map[string]string{}
	for b, key := range layout.OutboxKeys() {
		bucketOf[key] = b
		msgs, err := rdb.XRange(ctxT(t), key, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			id := strconv.Itoa(b) + "/" + m.ID
			outbox[id], channel[id] = m.Values["action_id"].(string), m.Values["channel"].(string)
		}
	}
	if len(outbox) != emails+smses {
		t.Fatalf("%d actions in the outbox, want %d", len(outbox), emails+smses)
	}

	// Wait, with a deadline, for every group to be done: nothing pending
	// or undelivered, and down's sms actions dead-lettered.
	out := delivery.New(rdb, layout, delivery.Options{})
	done := func() (bool, string) {
		groups, err := out.Groups(ctxT(t), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]delivery.Group{}
		for _, g := range groups {
			byName[g.Name] = g
		}
		for _, name := range []string{"webhook-flaky", "webhook-down", "webhook-push"} {
			g, ok := byName[name]
			if !ok || g.Pending != 0 || g.Undelivered != 0 || g.Unknown != 0 {
				return false, fmt.Sprintf("group %s: %+v (exists: %v)", name, g.Backlog, ok)
			}
		}
		dead, err := out.DeadAfter(ctxT(t), "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) != smses {
			return false, fmt.Sprintf("%d dead letters, want %d", len(dead), smses)
		}
		return true, ""
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, why := done()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks not done within 90s: %s; logs:\n%s", why, n.drainLogs())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// flaky: the set of accepted delivery ids is the outbox, each with the
	// action of its entry; the failed first attempts were retried.
	accepted, attempts, actions, verified := flaky.snapshot()
	failedFirst, timedOutFirst := 0, 0
	for id, action := range outbox {
		if !accepted[id] {
			t.Errorf("flaky: delivery %s (action %s) never accepted", id, action)
		}
		if actions[id] != action {
			t.Errorf("flaky: delivery %s carried action %q, want %s", id, actions[id], action)
		}
		if a := attempts[id]; len(a) == 0 || a[0] != 1 {
			t.Errorf("flaky: delivery %s: attempts %v, want the first numbered 1", id, a)
		}
		switch firstAttemptFate(id) {
		case http.StatusInternalServerError:
			failedFirst++
		case 0:
			timedOutFirst++
		default:
			continue
		}
		if a := attempts[id]; len(a) < 2 || a[1] != 2 {
			t.Errorf("flaky: delivery %s failed its first attempt; attempts %v, want a second numbered 2", id, a)
		}
	}
	for id := range accepted {
		if _, ok := outbox[id]; !ok {
			t.Errorf("flaky: accepted delivery %s is not in the outbox", id)
		}
	}
	if failedFirst == 0 || timedOutFirst == 0 {
		t.Errorf("flaky: %d first attempts failed with 500, %d timed out; want some of each", failedFirst, timedOutFirst)
	}
	total := 0
	for _, a := range attempts {
		total += len(a)
	}
	if verified != total {
		t.Errorf("flaky: %d of %d requests verified", verified, total)
	}
	t.Logf("flaky: %d actions, %d requests (%d first attempts failed with 500, %d timed out)", len(outbox), total, failedFirst, timedOutFirst)

	// down: only the sms actions, each tried with growing attempt numbers
	// until dead-lettered after max_deliveries deliveries.
	accepted, attempts, _, _ = down.snapshot()
	if len(accepted) != 0 {
		t.Errorf("down: accepted %v", accepted)
	}
	dead, err := out.DeadAfter(ctxT(t), "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	deadIDs := map[string]bool{}
	for _, d := range dead {
		stream, _ := d.Values["dead_stream"].(string)
		entry, _ := d.Values["dead_id"].(string)
		id := strconv.Itoa(bucketOf[stream]) + "/" + entry
		deadIDs[id] = true
		if d.Group != "webhook-down" || d.DeliveryCount != maxDeliveries || channel[id] != "sms" {
			t.Errorf("dead letter %s: group %s after %d deliveries, channel %q; want webhook-down after %d, sms", id, d.Group, d.DeliveryCount, channel[id], maxDeliveries)
		}
	}
	for id, ch := range channel {
		a := attempts[id]
		if ch != "sms" {
			if len(a) > 0 {
				t.Errorf("down: %s action %s was sent to the sms webhook", ch, id)
			}
			continue
		}
		if !deadIDs[id] {
			t.Errorf("down: sms action %s is not dead-lettered", id)
		}
		want := make([]int, len(a))
		for i := range want {
			want[i] = i + 1
		}
		if len(a) < maxDeliveries || !slices.Equal(a, want) {
			t.Errorf("down: delivery %s: attempts %v; want 1, 2, 3, ... (at least one per delivery)", id, a)
		}
	}
	if _, attempts, _, _ := push.snapshot(); len(attempts) != 0 {
		t.Errorf("push: called for %d deliveries, though no action is on push", len(attempts))
	}

	// The metrics, per webhook.
	scrape := httpGet(t, n.metrics)
	metric := func(pattern string) int {
		t.Helper()
		m := regexp.MustCompile(pattern + ` (\d+)`).FindStringSubmatch(scrape)
		if m == nil {
			t.Errorf("/metrics lacks %s", pattern)
			return -1
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	if got := metric(`nudge_webhook_delivered_total\{webhook="flaky"\}`); got < len(outbox) {
		t.Errorf("nudge_webhook_delivered_total{webhook=flaky} = %d, want at least %d", got, len(outbox))
	}
	if got := metric(`nudge_webhook_failed_total\{reason="http_5xx",webhook="flaky"\}`); got != failedFirst {
		t.Errorf("failed{flaky, http_5xx} = %d, want %d", got, failedFirst)
	}
	// At least: on a loaded machine a request answered 200 may time out too.
	if got := metric(`nudge_webhook_failed_total\{reason="timeout",webhook="flaky"\}`); got < timedOutFirst {
		t.Errorf("failed{flaky, timeout} = %d, want at least %d", got, timedOutFirst)
	}
	if got := metric(`nudge_webhook_filtered_total\{webhook="push"\}`); got != len(outbox) {
		t.Errorf("filtered{push} = %d, want %d", got, len(outbox))
	}
	if got := metric(`nudge_webhook_latency_seconds_count\{webhook="flaky"\}`); got != total {
		t.Errorf("latency count{flaky} = %d, want %d requests", got, total)
	}

	// SIGTERM: the webhooks stop with the rest, and nudged exits 0.
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("nudged exited with %v; logs:\n%s", err, n.drainLogs())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nudged did not exit within 30s of SIGTERM")
	}
}

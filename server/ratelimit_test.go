package server_test

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// testClock is a processing clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: now} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const limitedSecret = "secret-limited-1111"

// limitedConfig is a server on clk with the test tokens plus "limited",
// which may ingest and decide at the given rates, with bursts of
// burstSeconds (0: the default, 1).
func limitedConfig(clk *testClock, eventsPerSecond, decisionsPerSecond, burstSeconds float64) server.Config {
	cfg := authConfig()
	cfg.Now = clk.Now
	cfg.Tokens = append(cfg.Tokens, server.Token{
		Name: "limited", Secret: limitedSecret,
		Roles:           []server.Role{server.RoleIngest, server.RoleDecide},
		EventsPerSecond: eventsPerSecond, DecisionsPerSecond: decisionsPerSecond,
		BurstSeconds: burstSeconds,
	})
	return cfg
}

// wantLimited fails the test unless err is ResourceExhausted with msg and a
// RetryInfo of delay.
func wantLimited(t testing.TB, err error, msg string, delay time.Duration) {
	t.Helper()
	wantCode(t, err, codes.ResourceExhausted, msg)
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			if got := ri.GetRetryDelay().AsDuration(); got != delay {
				t.Fatalf("RetryInfo delay %v, want %v", got, delay)
			}
			return
		}
	}
	t.Fatalf("no RetryInfo in %v", status.Convert(err).Details())
}

func queries(n int) []*nudgev1.DecisionQuery {
	qs := make([]*nudgev1.DecisionQuery, n)
	for i := range qs {
		qs[i] = &nudgev1.DecisionQuery{UserId: "u1", Channel: "sms"}
	}
	return qs
}

func TestRateLimitDecisions(t *testing.T) {
	clk := newTestClock()
	h := start(t, okStore(), limitedConfig(clk, 0, 10, 0))
	ctx := withToken(callCtx(t), limitedSecret)
	decide := func() error {
		_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
		return err
	}
	batch := func(n int) error {
		_, err := h.decide.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: queries(n)})
		return err
	}
	// The burst is one second's worth (10), not the largest batch the
	// API accepts: a larger batch is refused for good, and costs nothing.
	wantCode(t, batch(1000), codes.InvalidArgument,
		`a batch of 1000 decisions is more than token "limited"'s burst of 10 (its rate × burst_seconds): send batches of at most 10`)
	if err := batch(10); err != nil {
		t.Fatalf("a batch of the burst on a full bucket: %v", err)
	}
	wantLimited(t, decide(), `token "limited" is over its limit of 10 decisions per second: retry in 100ms`, 100*time.Millisecond)

	// Other tokens have their own limits (here none).
	if _, err := h.decide.GetDecision(withToken(callCtx(t), decideSecret), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}); err != nil {
		t.Errorf("another token: %v", err)
	}

	clk.Advance(99 * time.Millisecond)
	wantLimited(t, decide(), "retry in 1ms", time.Millisecond)
	clk.Advance(time.Millisecond)
	if err := decide(); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
	wantLimited(t, decide(), "retry in 100ms", 100*time.Millisecond)
}

// TestRateLimitRefusedCallsAreFree: a refused batch takes nothing, so a
// smaller one that fits still passes.
func TestRateLimitRefusedCallsAreFree(t *testing.T) {
	clk := newTestClock()
	h := start(t, okStore(), limitedConfig(clk, 0, 1500, 0)) // burst: one second, 1500
	ctx := withToken(callCtx(t), limitedSecret)
	batch := func(n int) error {
		_, err := h.decide.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: queries(n)})
		return err
	}
	if err := batch(1000); err != nil {
		t.Fatal(err)
	}
	wantLimited(t, batch(1000), "limit of 1500 decisions per second: retry in 334ms", 334*time.Millisecond)
	if err := batch(500); err != nil {
		t.Fatalf("a batch that fits what is left: %v", err)
	}
}

func TestRateLimitPublish(t *testing.T) {
	clk := newTestClock()
	h := start(t, okStore(), limitedConfig(clk, 100, 0, 50)) // burst: 5000
	ctx := withToken(callCtx(t), limitedSecret)
	publish := func(events []*nudgev1.Event) error {
		_, err := h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: events})
		return err
	}
	// Larger than the burst: InvalidArgument, not a limit it could never
	// pass, and free.
	wantCode(t, publish(manyEvents(5001)), codes.InvalidArgument, "burst of 5000")
	if err := publish(manyEvents(5000)); err != nil {
		t.Fatalf("a batch of the burst on a full bucket: %v", err)
	}
	one := []*nudgev1.Event{ev("late", "u1", "view", "", now)}
	wantLimited(t, publish(one), `token "limited" is over its limit of 100 events per second: retry in 10ms`, 10*time.Millisecond)
	clk.Advance(10 * time.Millisecond)
	if err := publish(one); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
	// Decisions are not limited for this token.
	if _, err := h.decide.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: queries(1000)}); err != nil {
		t.Errorf("decisions: %v", err)
	}
}

// TestRateLimitStream: over the limit, the stream ends with
// ResourceExhausted once the batches read before are answered; the batch
// that was over is not applied, and passes on a new stream after the
// delay.
func TestRateLimitStream(t *testing.T) {
	clk := newTestClock()
	h := start(t, okStore(), limitedConfig(clk, 1, 0, 5000))
	stream, err := h.ingest.Stream(withToken(callCtx(t), limitedSecret))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: manyEvents(5000)}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetSeq() != 1 {
		t.Fatalf("the first batch: %v, %v", resp, err)
	}
	over := &nudgev1.StreamRequest{Seq: 2, Events: []*nudgev1.Event{ev("over", "u1", "view", "", now)}}
	if err := stream.Send(over); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantLimited(t, err, `token "limited" is over its limit of 1 events per second: retry in 1s`, time.Second)

	clk.Advance(time.Second)
	again, err := h.ingest.Stream(withToken(callCtx(t), limitedSecret))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Send(over); err != nil {
		t.Fatal(err)
	}
	resp, err := again.Recv()
	if err != nil {
		t.Fatalf("the batch re-sent after the delay: %v", err)
	}
	checkResults(t, resp.GetResults(), []result{{"over", applied, 1, ""}})
	if err := again.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// TestMaxRecvMsgBytes: grpc refuses a larger message with
// ResourceExhausted before anything reads it.
func TestMaxRecvMsgBytes(t *testing.T) {
	h := start(t, okStore(), server.Config{MaxRecvMsgBytes: 4096})
	_, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: manyEvents(200)})
	wantCode(t, err, codes.ResourceExhausted, "larger than max")
	if _, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: manyEvents(2)}); err != nil {
		t.Fatalf("a message under the bound: %v", err)
	}

	stream, err := h.ingest.Stream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: manyEvents(200)}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.ResourceExhausted, "larger than max")
}

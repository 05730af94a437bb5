package integration

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// budgetCalls runs n sequential GetDecision calls with the given budget and
// returns how long each took. Every call must answer, degraded or not.
func budgetCalls(t *testing.T, e *env, n int, budget time.Duration, wantDegraded bool) []time.Duration {
	t.Helper()
	took := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{
			UserId: fmt.Sprintf("u%d", i%50), Channel: "sms", Budget: durationpb.New(budget),
		})
		took = append(took, time.Since(start))
		if err != nil {
			t.Fatalf("call %d: %v (a decision must never fail because the store is slow)", i, err)
		}
		if resp.GetDecision().GetDegraded() != wantDegraded {
			t.Fatalf("call %d: degraded=%v, want %v: %v", i, resp.GetDecision().GetDegraded(), wantDegraded, resp.GetDecision())
		}
	}
	return took
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// With Redis paused (CLIENT PAUSE) or stopped, every GetDecision answers
// degraded, none errors, and then answers fresh again once Redis is back.
// The latencies are logged (the budget + 2 ms figure is a benchmark
// figure: see BENCHMARKS.md), not asserted.
func TestDecisionsDegradeWhenRedisPausedOrDown(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const budget = 5 * time.Millisecond
	budgetCalls(t, e, 50, time.Second, false) // warm: connections open

	// The pause outlasts the 1000 calls (about 6 s); it then expires on its
	// own (UNPAUSE would itself be paused on a new connection).
	const pause = 12 * time.Second
	if err := e.rdb.Do(ctxT(t), "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	paused := budgetCalls(t, e, 1000, budget, true)
	t.Logf("Redis paused: 1000 calls with a %v budget: p50 %v, p99 %v, max %v", budget, pct(paused, 0.5), pct(paused, 0.99), pct(paused, 1))

	// Fresh answers come back once the pause ends.
	deadline := time.Now().Add(pause + 10*time.Second)
	for {
		resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", Budget: durationpb.New(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if !resp.GetDecision().GetDegraded() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still degraded %v after the pause ended", deadline.Sub(time.Now().Add(-pause)))
		}
	}

	e.redis.Stop()
	down := budgetCalls(t, e, 1000, budget, true)
	t.Logf("Redis down: 1000 calls with a %v budget: p50 %v, p99 %v, max %v", budget, pct(down, 0.5), pct(down, 0.99), pct(down, 1))
}

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// gatedStep wraps step so that its first call blocks until release is
// closed, after reporting on entered: the shard's cycle is then busy, and
// calls made meanwhile queue behind it.
func gatedStep(step profile.Step) (gated profile.Step, entered <-chan struct{}, release chan<- struct{}) {
	in, rel := make(chan struct{}), make(chan struct{})
	var once sync.Once
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		first := false
		once.Do(func() { first = true })
		if first {
			close(in)
			<-rel
		}
		return step(p, events, now)
	}, in, rel
}

// waitQueued waits until n parts are queued on user's shard.
func waitQueued(t *testing.T, s *redisstore.Store, user string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Queued(user) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d parts queued for %s after 10s, want %d", s.Queued(user), user, n)
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded above
	}
}

// TestShardMergesQueuedCalls: calls for a user that arrive while its
// shard commits are merged into the next cycle: one read, each call's
// step in turn, one write; every call gets its own outcome.
func TestShardMergesQueuedCalls(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	const user, waiting = "hot", 20
	step, entered, release := gatedStep(triggerStep(profile.Limits{}))

	first := make(chan userOutcome, 1)
	go func() {
		first <- applyUsers(t.Context(), env.store, one(user, uev(user, "e0", triggerType, storeNow)), step)[0]
	}()
	<-entered
	outs := make(chan userOutcome, waiting)
	for i := 1; i <= waiting; i++ {
		go func() {
			outs <- applyUsers(t.Context(), env.store, one(user, uev(user, fmt.Sprintf("e%d", i), triggerType, storeNow)), step)[0]
		}()
	}
	waitQueued(t, env.store, user, waiting)
	close(release)

	if o := <-first; o.Err != nil || o.Version != 1 {
		t.Fatalf("first call: %+v, want version 1", o)
	}
	for range waiting {
		o := <-outs
		if o.Err != nil || o.Version != 2 || len(o.Results) != 1 || o.Results[0].Status != profile.Applied || len(o.Actions) != 1 {
			t.Errorf("queued call: %+v, want its event applied with its action at version 2 (one merged commit)", o)
		}
	}
	p, err := env.store.Get(t.Context(), user)
	if err != nil || p.Total(triggerType) != waiting+1 || p.Version != 2 {
		t.Fatalf("Get = %+v, %v; want %d events at version 2", p, err, waiting+1)
	}
	if s := env.store.Stats(); s.Transactions != 2 {
		t.Errorf("Stats().Transactions = %d, want 2: the first call's, then one for the %d merged", s.Transactions, waiting)
	}
	if n := outboxLen(t, env, user); n != waiting+1 {
		t.Errorf("%d outbox entries, want %d", n, waiting+1)
	}
}

// TestShardMergedCallsKeepTheirSteps: merged calls each run their own
// step (rules may be reloaded between two calls), in arrival order, on the
// profile the previous one left.
func TestShardMergedCallsKeepTheirSteps(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	const user = "u"
	trigger := triggerStep(profile.Limits{})
	gate, entered, release := gatedStep(trigger)
	quiet := func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		o := trigger(p, events, now)
		o.Actions = nil // another rules version: nothing fires
		return o
	}
	go applyUsers(t.Context(), env.store, one(user, uev(user, "e0", "view", storeNow)), gate)
	<-entered
	a, b := make(chan userOutcome, 1), make(chan userOutcome, 1)
	go func() {
		a <- applyUsers(t.Context(), env.store, one(user, uev(user, "e1", triggerType, storeNow)), trigger)[0]
	}()
	waitQueued(t, env.store, user, 1)
	go func() {
		// e1 again, then e2: e1 is a duplicate of the call before it.
		b <- applyUsers(t.Context(), env.store, one(user, uev(user, "e1", triggerType, storeNow), uev(user, "e2", triggerType, storeNow)), quiet)[0]
	}()
	waitQueued(t, env.store, user, 2)
	close(release)

	oa, ob := <-a, <-b
	if oa.Err != nil || len(oa.Actions) != 1 || oa.Results[0].Status != profile.Applied {
		t.Errorf("first queued call: %+v, want e1 applied with its action", oa)
	}
	if ob.Err != nil || len(ob.Actions) != 0 || len(ob.Results) != 2 ||
		ob.Results[0].Status != profile.Duplicate || ob.Results[1].Status != profile.Applied {
		t.Errorf("second queued call: %+v, want e1 duplicate, e2 applied, no action (its own step)", ob)
	}
	if oa.Version != ob.Version {
		t.Errorf("versions %d and %d: merged calls share one commit", oa.Version, ob.Version)
	}
}

// TestShardDropsCancelledCalls: a call whose context ends while it waits
// on a busy shard returns the context's error at once, and its events are
// dropped unread when the shard gets to them.
func TestShardDropsCancelledCalls(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	const user = "u"
	gate, entered, release := gatedStep(triggerStep(profile.Limits{}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		applyUsers(t.Context(), env.store, one(user, uev(user, "e0", "view", storeNow)), gate)
	}()
	<-entered
	ctx, cancel := context.WithCancel(t.Context())
	res := make(chan userOutcome, 1)
	go func() { res <- applyUsers(ctx, env.store, one(user, uev(user, "late", "view", storeNow)), gate)[0] }()
	waitQueued(t, env.store, user, 1)
	cancel()
	if o := <-res; !errors.Is(o.Err, context.Canceled) {
		t.Fatalf("cancelled call: %+v, want context.Canceled", o)
	}
	close(release)
	<-done
	// A later call on the shard runs after the dropped one.
	applyOne(t, env, triggerStep(profile.Limits{}), user, uev(user, "e1", "view", storeNow))
	p, err := env.store.Get(t.Context(), user)
	if err != nil || p.Total("view") != 2 || p.HasSeen("late") {
		t.Fatalf("Get = %+v, %v; want e0 and e1 only, not the cancelled call's event", p, err)
	}
}

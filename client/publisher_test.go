package client_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

const (
	manyEvents = 100_000
	manyUsers  = 1_000
)

func userIDs(prefix string) []string {
	users := make([]string, manyUsers)
	for i := range users {
		users[i] = fmt.Sprintf("%s-u%d", prefix, i)
	}
	return users
}

// runLength is how many consecutive events go to the same user: a batch
// of 500 touches 20 users. (One event per user per batch makes every
// event its own Redis transaction, which measures the store, not the
// client, and takes minutes under -race on a small machine.)
const runLength = 25

// publishMany publishes manyEvents views spread over users from several
// goroutines at once, then flushes.
func publishMany(ctx context.Context, p *client.Publisher, prefix string, users []string) error {
	const producers = 4
	errs := make(chan error, producers)
	for w := range producers {
		go func() {
			for i := w; i < manyEvents; i += producers {
				ev := view(fmt.Sprintf("%s-e%d", prefix, i), users[(i/runLength)%len(users)], "phones")
				if err := p.Publish(ctx, ev); err != nil {
					errs <- fmt.Errorf("publish event %d: %w", i, err)
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range producers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	return p.Flush(ctx)
}

func TestPublisherManyEvents(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	var results, actions atomic.Uint64
	p := c.NewPublisher(
		client.OnResult(func(*nudgev1.EventResult) { results.Add(1) }),
		client.OnAction(func(*nudgev1.Action) { actions.Add(1) }),
	)
	ctx := ctxT(t)
	users := userIDs("many")
	if err := publishMany(ctx, p, "many", users); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	want := client.Stats{Published: manyEvents, Acked: manyEvents, Applied: manyEvents}
	if st != want {
		t.Errorf("stats after Flush: %+v, want %+v", st, want)
	}
	if got := results.Load(); got != manyEvents {
		t.Errorf("OnResult called %d times, want %d", got, manyEvents)
	}
	// The category-interest-coupon trigger fires once per user (3 views,
	// then its 24h cooldown).
	if got := actions.Load(); got != manyUsers {
		t.Errorf("OnAction called %d times, want %d", got, manyUsers)
	}
	if got := e.totals(t, users, "view"); got != manyEvents {
		t.Errorf("sum of view totals = %d, want %d", got, manyEvents)
	}
}

// TestPublisherSurvivesServerRestarts is the acceptance test: the
// server is killed, then drained, and restarted on the same address in the
// middle of a 100k-event send; every event counts exactly once.
func TestPublisherSurvivesServerRestarts(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var pub *client.Publisher // set before any result can arrive
	killed := make(chan struct{})
	drainNow := make(chan struct{})
	var killOnce, drainOnce sync.Once
	var acked atomic.Uint64
	pub = c.NewPublisher(client.OnResult(func(*nudgev1.EventResult) {
		n := acked.Add(1)
		st := pub.Stats()
		// Kill the server from the publisher's own goroutine while batches
		// are surely in flight (more unacked events than the batch being
		// delivered holds), so some must be re-sent.
		if n >= manyEvents*3/10 && st.Published-n >= 2000 {
			killOnce.Do(func() {
				e.stop()
				close(killed)
			})
		}
		if n >= manyEvents*6/10 {
			drainOnce.Do(func() { close(drainNow) })
		}
	}))
	users := userIDs("restart")
	sent := make(chan error, 1)
	go func() { sent <- publishMany(ctx, pub, "restart", users) }()

	var err error
	done := false
	for !done && (killed != nil || drainNow != nil) {
		select {
		case <-killed:
			killed = nil
			e.start()
		case <-drainNow:
			if killed != nil { // both fired: restart the killed server first
				<-killed
				killed = nil
				e.start()
			}
			drainNow = nil
			e.drain()
			e.start()
		case err = <-sent:
			done = true
		}
	}
	if !done {
		err = <-sent
	}
	if err != nil {
		t.Fatalf("publish with restarts: %v (stats %+v)", err, pub.Stats())
	}
	st := pub.Stats()
	if err := pub.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("stats: %+v", st)
	if killed != nil || drainNow != nil {
		t.Fatalf("the send ended before both restarts (killed: %v, drained: %v)", killed == nil, drainNow == nil)
	}
	if st.Published != manyEvents || st.Acked != manyEvents || st.Applied+st.Duplicate != manyEvents || st.Rejected != 0 || st.Failed != 0 {
		t.Errorf("stats %+v: want %d published and acked, all applied or duplicate", st, manyEvents)
	}
	if st.Resent == 0 || st.Reconnects == 0 {
		t.Errorf("stats %+v: want Resent > 0 and Reconnects > 0", st)
	}
	if got := e.totals(t, users, "view"); got != manyEvents {
		t.Errorf("sum of view totals = %d, want exactly %d", got, manyEvents)
	}
}

func TestPublisherBackpressure(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	e.stop() // nothing acknowledges: the publisher fills up
	ctx := ctxT(t)

	t.Run("non-blocking", func(t *testing.T) {
		p := c.NewPublisher(client.MaxBatch(1), client.MaxInFlight(1), client.NonBlocking())
		accepted := 0
		var err error
		// At most MaxInFlight + 2 batches of MaxBatch events fit.
		for i := 0; i < 10 && err == nil; i++ {
			if err = p.Publish(ctx, view(fmt.Sprintf("bp-%d", i), "bp-user", "phones")); err == nil {
				accepted++
			}
		}
		wantErr(t, err, client.ErrFull)
		if accepted == 0 || accepted > 3 {
			t.Errorf("%d events accepted before ErrFull, want 1 to 3", accepted)
		}
		if got := p.Stats().Published; got != uint64(accepted) {
			t.Errorf("Published = %d, want %d", got, accepted)
		}

		// Once the server is back, everything accepted is applied.
		e.start()
		defer e.stop()
		if err := p.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if st := p.Stats(); st.Applied != uint64(accepted) || st.Failed != 0 {
			t.Errorf("stats %+v: want %d applied", st, accepted)
		}
		if got := e.totals(t, []string{"bp-user"}, "view"); got != uint64(accepted) {
			t.Errorf("view total = %d, want %d", got, accepted)
		}
	})

	t.Run("blocking", func(t *testing.T) {
		e.stop()
		var failed []*nudgev1.Event
		p := c.NewPublisher(client.MaxBatch(1), client.MaxInFlight(1),
			client.OnError(func(ev *nudgev1.Event, err error) {
				if err == client.ErrClosed {
					failed = append(failed, ev)
				}
			}))
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		accepted := 0
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			if err = p.Publish(short, view(fmt.Sprintf("bpb-%d", i), "bpb-user", "phones")); err == nil {
				accepted++
			}
		}
		wantErr(t, err, context.DeadlineExceeded)
		if accepted == 0 || accepted > 3 {
			t.Errorf("%d events accepted before blocking, want 1 to 3", accepted)
		}
		// Close gives up when its context ends and reports what it dropped.
		closeCtx, cancelClose := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancelClose()
		wantErr(t, p.Close(closeCtx), context.DeadlineExceeded)
		if len(failed) != accepted || p.Stats().Failed != uint64(accepted) {
			t.Errorf("OnError(ErrClosed) for %d events, Failed %d; want %d", len(failed), p.Stats().Failed, accepted)
		}
		wantErr(t, p.Publish(ctx, view("bpb-late", "bpb-user", "phones")), client.ErrClosed)
		wantErr(t, p.Flush(ctx), client.ErrClosed)
	})
}

// TestPublisherInvalidBatch: a batch the server refuses as a whole is
// reported and dropped, not retried forever, and the batches around it go
// through.
func TestPublisherInvalidBatch(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	ctx := ctxT(t)
	const tooMany = 5001 // the server takes at most 5000 events per batch
	var mu sync.Mutex
	var failed int
	var lastErr error
	p := c.NewPublisher(client.MaxBatch(tooMany), client.Linger(time.Hour),
		client.OnError(func(_ *nudgev1.Event, err error) {
			mu.Lock()
			defer mu.Unlock()
			failed++
			lastErr = err
		}))
	for i := range tooMany {
		if err := p.Publish(ctx, view(fmt.Sprintf("inv-%d", i), "inv-user", "phones")); err != nil {
			t.Fatal(err)
		}
	}
	ok := []string{"ok-a", "ok-b", "ok-c"}
	for i, u := range ok {
		if err := p.Publish(ctx, view(fmt.Sprintf("ok-%d", i), u, "phones")); err != nil {
			t.Fatal(err)
		}
	}
	// A bad event is no error for its batch: it is rejected alone.
	bad := view("bad-1", "ok-a", "phones")
	bad.Type = "Not A Type"
	if err := p.Publish(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st := p.Stats()
	if st.Failed != tooMany || failed != tooMany {
		t.Errorf("Failed %d, OnError %d times; want %d", st.Failed, failed, tooMany)
	}
	if status.Code(lastErr) != codes.InvalidArgument {
		t.Errorf("OnError got %v, want InvalidArgument", lastErr)
	}
	if st.Applied != 3 || st.Rejected != 1 || st.Acked != 4 {
		t.Errorf("stats %+v: want 3 applied and 1 rejected", st)
	}
	if got := e.totals(t, []string{"inv-user"}, "view"); got != 0 {
		t.Errorf("the refused batch counted %d views", got)
	}
	if got := e.totals(t, ok, "view"); got != 3 {
		t.Errorf("views of the good batch = %d, want 3", got)
	}
}

func TestPublisherRejectsUnencodableEvents(t *testing.T) {
	e := newEnv(t)
	p := e.dial(t).NewPublisher()
	defer func() { _ = p.Close(ctxT(t)) }()
	wantErr(t, p.Publish(ctxT(t), nil), client.ErrInvalidEvent)
	wantErr(t, p.Publish(ctxT(t), view("x", "bad\xffutf8", "phones")), client.ErrInvalidEvent)
}

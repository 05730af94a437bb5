package server

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sync/semaphore"
)

// TestRecvBound: batch calls hold their share until they give it back
// (once), a call that does not fit waits until its context ends, and one
// token holds at most half the bound. Time is synctest's: a wait until a
// deadline takes none.
func TestRecvBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		all := semaphore.NewWeighted(100)
		alice, bob := semaphore.NewWeighted(50), semaphore.NewWeighted(50)
		hold := func(token *semaphore.Weighted, n int64) *holding {
			t.Helper()
			h := &holding{all: all, token: token, n: n}
			if !h.tryTake() {
				t.Fatalf("no room for %d", n)
			}
			return h
		}
		waits := func(token *semaphore.Weighted, n int64) {
			t.Helper()
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			h := &holding{all: all, token: token, n: n}
			if h.wait(ctx) {
				t.Fatalf("took %d, want it to wait until its deadline", n)
			}
			h.release() // not held: gives nothing back
		}
		a1 := hold(alice, 30)
		a2 := hold(alice, 20)
		waits(alice, 1) // alice holds her half
		b1 := hold(bob, 40)
		waits(nil, 11) // 90 of 100 held
		hold(nil, 10)  // no token (no authentication): only the total
		a1.release()
		a1.release() // once only
		a3 := hold(alice, 30)
		waits(bob, 1) // the total is full again

		// A waiting call gets in when room is given back.
		got := make(chan bool)
		go func() { got <- (&holding{all: all, token: bob, n: 40}).wait(t.Context()) }()
		synctest.Wait()
		a2.release()
		b1.release()
		a3.release()
		if !<-got {
			t.Fatal("the waiting call did not get the room given back")
		}
	})
}

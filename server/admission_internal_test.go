package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
)

// TestRecvBound: calls hold their share until they give it back (once), a
// call that does not fit waits, until its context ends, and one token holds
// at most half the bound.
func TestRecvBound(t *testing.T) {
	b := newRecvBound(100)
	alice := &principal{name: "alice", recv: semaphore.NewWeighted(b.perToken)}
	bob := &principal{name: "bob", recv: semaphore.NewWeighted(b.perToken)}
	hold := func(p *principal, n int64) *holding {
		t.Helper()
		h := &holding{b: b, p: p, n: n}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.wait(ctx); err != nil {
			t.Fatalf("wait(%v, %d): %v", p, n, err)
		}
		return h
	}
	waits := func(p *principal, n int64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		h := &holding{b: b, p: p, n: n}
		if err := h.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait(%v, %d) = %v, want it to wait until its deadline", p, n, err)
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
	waits(bob, 11) // the total is full again
	a2.release()
	b1.release()
	a3.release()
	// 10 held (the call without a token): bob may take his whole half.
	hold(bob, 50)
}

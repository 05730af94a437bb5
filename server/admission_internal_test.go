package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRecvBound: calls hold their share until they give it back, a call
// that does not fit is refused, and one token holds at most half.
func TestRecvBound(t *testing.T) {
	b := newRecvBound(100)
	alice, bob := &principal{name: "alice"}, &principal{name: "bob"}
	hold := func(p *principal, n int64) *holding {
		t.Helper()
		h, err := b.hold(p, n)
		if err != nil {
			t.Fatalf("hold(%v, %d) with %d held: %v", p, n, b.held, err)
		}
		return h
	}
	refused := func(p *principal, n int64, want string) {
		t.Helper()
		_, err := b.hold(p, n)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), want) {
			t.Fatalf("hold(%v, %d) with %d held: %v, want ResourceExhausted with %q", p, n, b.held, err, want)
		}
	}
	a1 := hold(alice, 30)
	a2 := hold(alice, 20)
	refused(alice, 1, "this token's calls")
	b1 := hold(bob, 40)
	refused(nil, 11, "server is receiving its bound")
	hold(nil, 10) // no token (no authentication): only the total
	a1.release()
	a1.release() // once only
	if b.held != 70 || b.byToken[alice] != 20 {
		t.Fatalf("after a release: held %d, alice %d; want 70, 20", b.held, b.byToken[alice])
	}
	hold(alice, 30)
	a2.release()
	b1.release()
	if _, ok := b.byToken[bob]; ok || b.held != 40 {
		t.Fatalf("held %d, bob's entry kept %v; want 40 and none", b.held, ok)
	}
}

package console

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// signInThrottle slows down guessing: each remote address may fail to
// sign in signInBurst times at once, then once per signInEvery. Tokens
// are long random secrets, so this bounds the noise of a guesser more
// than its odds. The table is bounded: past maxThrottled addresses it
// starts afresh (a guesser with that many addresses is not stopped by
// a table anyway).
type signInThrottle struct {
	mu  sync.Mutex
	by  map[string]*rate.Limiter
	now func() time.Time
}

const (
	signInBurst  = 10
	signInEvery  = 6 * time.Second
	maxThrottled = 4096
)

func newSignInThrottle(now func() time.Time) *signInThrottle {
	return &signInThrottle{by: make(map[string]*rate.Limiter), now: now}
}

// limiter is the failure allowance of the request's remote address.
func (t *signInThrottle) limiter(r *http.Request) *rate.Limiter {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.by[host]
	if l == nil {
		if len(t.by) >= maxThrottled {
			clear(t.by)
		}
		l = rate.NewLimiter(rate.Every(signInEvery), signInBurst)
		t.by[host] = l
	}
	return l
}

// blocked reports whether the address has used up its failures.
func (t *signInThrottle) blocked(r *http.Request) bool {
	return t.limiter(r).TokensAt(t.now()) < 1
}

// failed spends one of the address's failures.
func (t *signInThrottle) failed(r *http.Request) {
	t.limiter(r).AllowN(t.now(), 1)
}

package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"slices"
	"sync"
	"time"
)

// session is a signed-in browser. The cookie carries only its id; the
// token it signed in with stays here, and every RPC the console makes for
// it carries that token.
type session struct {
	id    string
	csrf  string // sent back with every POST
	token string // empty in open mode
	name  string // the token's name, shown on every page
	roles []string
	start time.Time
	seen  time.Time
}

// may reports whether the session holds one of roles. Every session holds
// admin or console (sign-in refuses other tokens; in open mode, without
// tokens, a session holds admin), and the server's tokens do not change
// while it runs, so a session's roles stay true for its life.
func (s *session) may(roles ...string) bool {
	return slices.ContainsFunc(roles, func(r string) bool { return slices.Contains(s.roles, r) })
}

// sessions is the console's in-memory session table: bounded, with an
// absolute lifetime and an idle timeout. Sessions end with the process (a
// restart signs everyone out), which keeps tokens off disk.
type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	ttl  time.Duration
	idle time.Duration
	max  int
	now  func() time.Time
}

func newSessions(ttl, idle time.Duration, max int, now func() time.Time) *sessions {
	return &sessions{byID: make(map[string]*session), ttl: ttl, idle: idle, max: max, now: now}
}

// start makes a new session, evicting expired ones and, past max, the
// least recently seen.
func (t *sessions) start(token, name string, roles []string) *session {
	now := t.now()
	s := &session{id: randomID(), csrf: randomID(), token: token, name: name, roles: roles, start: now, seen: now}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, o := range t.byID {
		if t.expired(o, now) {
			delete(t.byID, id)
		}
	}
	for len(t.byID) >= t.max {
		var oldest *session
		for _, o := range t.byID {
			if oldest == nil || o.seen.Before(oldest.seen) {
				oldest = o
			}
		}
		delete(t.byID, oldest.id)
	}
	t.byID[s.id] = s
	return s
}

// get returns the live session with id, and marks it seen.
func (t *sessions) get(id string) *session {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byID[id]
	switch {
	case s == nil:
		return nil
	case t.expired(s, now):
		delete(t.byID, id)
		return nil
	}
	s.seen = now
	return s
}

// end forgets the session with id.
func (t *sessions) end(id string) {
	t.mu.Lock()
	delete(t.byID, id)
	t.mu.Unlock()
}

func (t *sessions) expired(s *session, now time.Time) bool {
	return now.Sub(s.start) >= t.ttl || now.Sub(s.seen) >= t.idle
}

// randomID is 256 random bits, URL-safe.
func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sameSecret compares two secrets in constant time.
func sameSecret(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

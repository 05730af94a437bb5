package server

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

func TestUserAttr(t *testing.T) {
	hashed := &Server{cfg: Config{}}
	clear := &Server{cfg: Config{LogUserIDs: true}}
	form := regexp.MustCompile(`^h:[0-9a-f]{16}$`)

	a := hashed.userAttr("alice-secret-42")
	if a.Key != "user" || a.Value.Kind() != slog.KindString || !form.MatchString(a.Value.String()) {
		t.Fatalf("userAttr = %v, want user=h:<16 hex>", a)
	}
	if again := hashed.userAttr("alice-secret-42"); !again.Equal(a) {
		t.Errorf("not stable: %v then %v", a, again)
	}
	if other := hashed.userAttr("alice-secret-43"); other.Equal(a) {
		t.Errorf("two ids, one hash: %v", other)
	}
	// Keyed: not the plain SHA-256 of the id, which anyone could compute
	// for likely ids.
	plain := sha256.Sum256([]byte("alice-secret-42"))
	if a.Value.String() == "h:"+hex.EncodeToString(plain[:])[:16] {
		t.Errorf("the hash is not keyed: %v", a)
	}
	if got := clear.userAttr("alice-secret-42"); got.Value.String() != "alice-secret-42" {
		t.Errorf("with LogUserIDs: %v", got)
	}
}

func TestRedactUsers(t *testing.T) {
	s := &Server{cfg: Config{}}
	h := func(id string) string { return s.logUser(id) }
	tests := []struct {
		name, in, want string
	}{
		{"none", "profile: store unavailable", "profile: store unavailable"},
		{"one", `rpc error: code = Aborted desc = user "u-1": 64 attempts: conflict`, `rpc error: code = Aborted desc = user ` + h("u-1") + `: 64 attempts: conflict`},
		{"joined", "user \"a\": x\nuser \"b\\\"q\": y", "user " + h("a") + ": x\nuser " + h(`b"q`) + ": y"},
		{"not quoted", `user "unterminated`, `user "unterminated`},
		{"word only", `a user is "here"`, `a user is "here"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.redactUsers(tt.in); got != tt.want {
				t.Errorf("redactUsers(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	in := `user "u-1": conflict`
	if got := (&Server{cfg: Config{LogUserIDs: true}}).redactUsers(in); got != in {
		t.Errorf("with LogUserIDs: %q", got)
	}
}

func TestSaneRequestID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"req-42", true},
		{"with spaces and :/=+", true},
		{strings.Repeat("a", maxRequestIDLen), true},
		{strings.Repeat("a", maxRequestIDLen+1), false},
		{"", false},
		{"tab\there", false},
		{"new\nline", false},
		{"del\x7f", false},
		{"é", false},
	}
	for _, tt := range tests {
		if got := saneRequestID(tt.id); got != tt.want {
			t.Errorf("saneRequestID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

// TestBurst: the burst is the rate × burst seconds, rounded up, at least
// 1, never raised to the largest batch.
func TestBurst(t *testing.T) {
	for _, tt := range []struct {
		perSecond, seconds float64
		burst              int
	}{
		{2, 1, 2},
		{0.5, 1, 1},
		{5000.5, 1, 5001},
		{2, 2.5, 5},
		{10, 0.1, 1},
		{1e300, 1, 1<<31 - 1},
	} {
		l, err := newLimiter("t", "DecisionsPerSecond", tt.perSecond, tt.seconds)
		if err != nil {
			t.Fatal(err)
		}
		if l.Burst() != tt.burst {
			t.Errorf("%v/s × %vs: burst %d, want %d", tt.perSecond, tt.seconds, l.Burst(), tt.burst)
		}
	}
}

package redisstore

import (
	"fmt"
	"testing"
)

// hashSet holds every hash once, 0 included, across its growths.
func TestHashSet(t *testing.T) {
	var s hashSet
	const n = 100_000
	for i := range uint64(n) {
		h := i * 0x9E3779B97F4A7C15 // spread, and 0 for i = 0
		if !s.add(h) {
			t.Fatalf("hash %d: reported present before it was added", i)
		}
		if s.add(h) {
			t.Fatalf("hash %d: added twice", i)
		}
	}
	if s.n != n || 4*s.n > 3*len(s.slots) || 8*s.n < 3*len(s.slots) {
		t.Errorf("%d hashes in %d slots, want %d between 3/8 and 3/4 full", s.n, len(s.slots), n)
	}
	// 0 and 1 share a slot value: the set takes them for one hash.
	var z hashSet
	if !z.add(0) || z.add(1) {
		t.Errorf("hash 0 is stored as 1: adding 1 after 0 must find it")
	}
}

func TestUserOf(t *testing.T) {
	l := NewLayout(16)
	for _, u := range []string{"u1", "a}:p:b", "{7}", "x:p:y"} {
		if got, ok := l.userOf(l.ProfileKey(u)); !ok || got != u {
			t.Errorf("userOf(ProfileKey(%q)) = %q, %v", u, got, ok)
		}
	}
	b := l.Bucket("u1")
	for _, key := range []string{
		fmt.Sprintf("nudge:{%d}:p:u1", (b+1)%16), // another bucket
		fmt.Sprintf("nudge:{0%d}:p:u1", b),       // not the layout's spelling
		fmt.Sprintf("nudge:{%d}:p:", b),          // no user
		"nudge:{x}:p:u1", "nudge:{1}:out", "nudge:{1}:t:3", "nudge:dead", "other:{1}:p:u1",
	} {
		if u, ok := l.userOf(key); ok {
			t.Errorf("userOf(%q) = %q, want no user", key, u)
		}
	}
}

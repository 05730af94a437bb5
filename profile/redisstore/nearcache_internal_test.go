package redisstore

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// upCache is a near-cache with tracking up, verified at the fake clock's
// time.
func upCache(t *testing.T, maxBytes int64) (*nearCache, *time.Time) {
	t.Helper()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	c := newNearCache(NearCacheOptions{MaxBytes: maxBytes, MaxSilence: 250 * time.Millisecond}, func() time.Time { return now })
	c.setUp(true, now)
	return c, &now
}

func TestNearCacheRules(t *testing.T) {
	v := func(n uint64) *profile.Profile { return &profile.Profile{Version: n} }
	tests := []struct {
		name string
		run  func(c *nearCache, now *time.Time)
		// want is the version found for key "k" with minVersion min (0:
		// not found; -1: found without a profile).
		min  uint64
		want int
	}{
		{"stored is served", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
		}, 0, 3},
		{"absence is served", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", nil, 0)
		}, 0, -1},
		{"absence is not served to a minimum version", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", nil, 0)
		}, 1, 0},
		{"older than the minimum version is not served", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
		}, 4, 0},
		{"at the minimum version is served", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", v(4), 100)
		}, 4, 4},
		{"invalidated", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
			c.invalidate("k")
		}, 0, 0},
		{"an invalidation racing the read refuses its reply", func(c *nearCache, _ *time.Time) {
			t := c.begin("k")
			c.invalidate("k") // arrived before the reply
			c.store(t, "k", v(3), 100)
		}, 0, 0},
		{"an invalidation of another key of the shard refuses it too", func(c *nearCache, _ *time.Time) {
			t := c.begin("k")
			c.invalidate(sameShard(c, "k"))
			c.store(t, "k", v(3), 100)
		}, 0, 0},
		{"a flush refuses replies in flight", func(c *nearCache, _ *time.Time) {
			t := c.begin("k")
			c.flush()
			c.store(t, "k", v(3), 100)
		}, 0, 0},
		{"tracking down: not served", func(c *nearCache, _ *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
			c.setUp(false, time.Time{})
		}, 0, 0},
		{"tracking down and up again: emptied", func(c *nearCache, now *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
			c.setUp(false, time.Time{})
			c.setUp(true, *now)
		}, 0, 0},
		{"a read begun before tracking came up stores nothing", func(c *nearCache, now *time.Time) {
			c.setUp(false, time.Time{})
			t := c.begin("k") // down: no ticket
			c.setUp(true, *now)
			c.store(t, "k", v(3), 100)
		}, 0, 0},
		{"a read begun while up, stored after a down and up, is refused", func(c *nearCache, now *time.Time) {
			t := c.begin("k")
			c.setUp(false, time.Time{})
			c.setUp(true, *now)
			c.store(t, "k", v(3), 100)
		}, 0, 0},
		{"heartbeat older than the max silence: not served", func(c *nearCache, now *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
			*now = now.Add(250 * time.Millisecond)
		}, 0, 0},
		{"heartbeat within the max silence: served", func(c *nearCache, now *time.Time) {
			c.store(c.begin("k"), "k", v(3), 100)
			*now = now.Add(249 * time.Millisecond)
		}, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, now := upCache(t, 1<<30)
			tt.run(c, now)
			p, found := c.lookup("k", tt.min)
			got := 0
			switch {
			case found && p == nil:
				got = -1
			case found:
				got = int(p.Version)
			}
			if got != tt.want {
				t.Fatalf("lookup = %d, want %d", got, tt.want)
			}
		})
	}
}

// sameShard returns a key other than key in key's shard.
func sameShard(c *nearCache, key string) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("other-%d", i)
		if c.shard(k) == c.shard(key) {
			return k
		}
	}
}

// The cache stays within its bound, evicting the least recently used.
func TestNearCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c, _ := upCache(t, nearShards*4000)
	// Keys of one shard, each costing 5*100+1024+160+len(key) bytes: two
	// fit in the shard's 4000 bytes, three do not.
	keys := []string{"a", sameShardN(c, "a", 1), sameShardN(c, "a", 2)}
	for _, k := range keys[:2] {
		c.store(c.begin(k), k, &profile.Profile{Version: 1}, 100)
	}
	if _, ok := c.lookup(keys[0], 0); !ok { // keys[1] is now the least recent
		t.Fatal("first key not cached")
	}
	c.store(c.begin(keys[2]), keys[2], &profile.Profile{Version: 1}, 100)
	for i, want := range []bool{true, false, true} {
		if _, ok := c.lookup(keys[i], 0); ok != want {
			t.Errorf("key %d cached %v, want %v", i, ok, want)
		}
	}
	if entries, bytes := c.size(); entries != 2 || bytes > 4000 {
		t.Errorf("size = %d entries, %d bytes; want 2 within 4000", entries, bytes)
	}
	if c.evictions.Load() != 1 {
		t.Errorf("evictions = %d, want 1", c.evictions.Load())
	}
	// A profile larger than a shard is not cached at all.
	c.store(c.begin("huge"), "huge", &profile.Profile{}, 800)
	if _, ok := c.lookup("huge", 0); ok {
		t.Error("a profile larger than the shard's bound was cached")
	}
}

// sameShardN returns the n-th key of the form "s<i>" in key's shard.
func sameShardN(c *nearCache, key string, n int) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("s%d-%d", n, i)
		if c.shard(k) == c.shard(key) {
			return k
		}
	}
}

// decodedSize must not underestimate what decoded profiles hold, or the
// cache's memory bound would be a lie: decode many copies of profiles of
// several sizes and compare the heap's growth with the estimate.
func TestDecodedSizeEstimate(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	l := profile.Limits{}.WithDefaults()
	for _, events := range []int{1, 20, 200} {
		p := &profile.Profile{}
		for i := range events {
			e := profile.Event{ID: fmt.Sprintf("e%d", i), UserID: "u", Type: []string{"view", "cart", "purchase"}[i%3],
				Category: fmt.Sprintf("cat-%d", i%7), OccurredAt: now.Add(-time.Duration(i) * time.Minute), Value: 10}
			p.ApplyEvent(&e, now, l)
		}
		raw := profile.Encode(p)
		const copies = 2000
		kept := make([]*profile.Profile, copies)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range kept {
			var err error
			if kept[i], err = profile.Decode(raw); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perProfile := int64(after.HeapAlloc-before.HeapAlloc) / copies
		runtime.KeepAlive(kept)
		if est := decodedSize(len(raw)); est < perProfile {
			t.Errorf("%d events: %d encoded bytes decode to %d bytes, estimated %d", events, len(raw), perProfile, est)
		}
	}
}

// Concurrent misses of a key share a read while nothing may have changed
// the key since it was sent.
func TestNearCacheFlights(t *testing.T) {
	tests := []struct {
		name   string
		before func(c *nearCache, now *time.Time) // between the first join and the second
		shared bool
	}{
		{"in flight: joined", func(*nearCache, *time.Time) {}, true},
		{"another key of the shard invalidated: not joined", func(c *nearCache, _ *time.Time) { c.invalidate(sameShard(c, "k")) }, false},
		{"the key invalidated: not joined", func(c *nearCache, _ *time.Time) { c.invalidate("k") }, false},
		{"flushed: not joined", func(c *nearCache, _ *time.Time) { c.flush() }, false},
		{"tracking down: not joined", func(c *nearCache, _ *time.Time) { c.setUp(false, time.Time{}) }, false},
		{"tracking down and up: not joined", func(c *nearCache, now *time.Time) {
			c.setUp(false, time.Time{})
			c.setUp(true, *now)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, now := upCache(t, 1<<30)
			first, leader := c.join("k")
			if !leader {
				t.Fatal("the first read of a key does not lead")
			}
			tt.before(c, now)
			second, leader := c.join("k")
			if got := !leader && second == first; got != tt.shared {
				t.Fatalf("second read shared the first's: %v, want %v", got, tt.shared)
			}
			want := &profile.Profile{Version: 7}
			c.land("k", first, want, nil)
			<-first.done
			if first.p != want {
				t.Fatal("landing did not publish the reply")
			}
			if second != first {
				c.land("k", second, want, nil)
			}
			if _, leader := c.join("k"); !leader {
				t.Fatal("a read after every flight landed joined one")
			}
		})
	}
	// Without a cache every read leads its own flight.
	var off *nearCache
	f, leader := off.join("k")
	off.land("k", f, nil, nil)
	if !leader {
		t.Fatal("a read without a cache did not lead")
	}
}

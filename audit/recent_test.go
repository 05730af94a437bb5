package audit_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/internal/redistest"
)

// RecentForUser pages back through the newest scan entries, newest first,
// and keeps the user's, up to want; against a real redis-server.
func TestRecentForUser(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Start(t).Client(t)
	l := audit.New(rdb, audit.Options{})
	if recs, err := l.RecentForUser(ctx, "u1", 100, 10); err != nil || len(recs) != 0 {
		t.Fatalf("RecentForUser of no stream = %v, %v", recs, err)
	}
	// 1300 entries, more than two pages: d0..d1299, every 10th of user
	// u1 (d0, d10, ...), the others of u2; and one of u1 that does not
	// decode, written first (oldest).
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC).Format(time.RFC3339Nano)
	_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: audit.DefaultStream, Values: []any{"user_id", "u1", "not", "a decision"}})
		for i := range 1300 {
			user := "u2"
			if i%10 == 0 {
				user = "u1"
			}
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: audit.DefaultStream, Values: []any{
				"decision_id", fmt.Sprintf("d%d", i), "at", at, "user_id", user, "profile_version", "1",
			}})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// u1's decisions, newest first, among the newest scan entries.
	u1 := func(scan, want int) []string {
		var ids []string
		for i := 1299; i >= 1300-scan && i >= 0 && len(ids) < want; i-- {
			if i%10 == 0 {
				ids = append(ids, fmt.Sprintf("d%d", i))
			}
		}
		return ids
	}
	tests := []struct {
		name      string
		user      string
		scan      int64
		want      int
		ids       []string
		malformed bool // the oldest, undecodable entry ends the answer
	}{
		{"want bounds", "u1", 2000, 5, u1(1300, 5), false},
		{"scan bounds", "u1", 95, 100, u1(95, 100), false},
		{"across pages", "u1", 1200, 1000, u1(1200, 1000), false},
		{"the whole stream, undecodable entry included", "u1", 5000, 1000, u1(1300, 1000), true},
		{"a page boundary exactly", "u1", 500, 1000, u1(500, 1000), false},
		{"unknown user", "u3", 5000, 10, nil, false},
		{"empty user", "", 5000, 10, nil, false},
		{"no scan", "u1", 0, 10, nil, false},
		{"no want", "u1", 100, 0, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := l.RecentForUser(ctx, tt.user, tt.scan, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for i, r := range recs {
				if r.Entry.UserID != tt.user {
					t.Errorf("record %d is of %q", i, r.Entry.UserID)
				}
				if r.Err != nil {
					if !tt.malformed || i != len(recs)-1 || !errors.Is(r.Err, audit.ErrBadEntry) {
						t.Errorf("record %d: %v", i, r.Err)
					}
					continue
				}
				ids = append(ids, r.Entry.DecisionID)
			}
			if !slices.Equal(ids, tt.ids) {
				t.Errorf("decisions = %v, want %v", ids, tt.ids)
			}
			if gotBad := len(recs) > 0 && recs[len(recs)-1].Err != nil; gotBad != tt.malformed {
				t.Errorf("undecodable entry returned: %v, want %v", gotBad, tt.malformed)
			}
		})
	}
}

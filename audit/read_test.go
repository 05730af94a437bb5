package audit_test

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/internal/redistest"
)

// Newest and Read page through the stream from any entry, and hand back
// an entry that does not decode with its id and the reason; against a
// real redis-server.
func TestNewestAndRead(t *testing.T) {
	ctx := t.Context()
	rdb := redistest.Start(t).Client(t)
	l := audit.New(rdb, audit.Options{})
	newest, err := l.Newest(ctx)
	if err != nil || newest != "0-0" {
		t.Fatalf("Newest of no stream = %q, %v; want 0-0", newest, err)
	}
	if recs, err := l.Read(ctx, newest, 10); err != nil || len(recs) != 0 {
		t.Fatalf("Read of no stream = %v, %v", recs, err)
	}
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC).Format(time.RFC3339Nano)
	for _, v := range [][]any{
		{"decision_id", "d1", "at", at, "profile_version", "1"},
		{"not", "a decision"},
		{"decision_id", "d3", "at", at, "profile_version", "3"},
	} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: audit.DefaultStream, Values: v}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	all, err := l.Read(ctx, "0-0", 10)
	if err != nil || len(all) != 3 {
		t.Fatalf("Read from the oldest = %v, %v; want 3", all, err)
	}
	if all[0].Entry.DecisionID != "d1" || all[0].Err != nil || !errors.Is(all[1].Err, audit.ErrBadEntry) || all[2].Entry.DecisionID != "d3" {
		t.Errorf("Read = %+v", all)
	}
	if newest, err = l.Newest(ctx); err != nil || newest != all[2].ID {
		t.Errorf("Newest = %q, %v; want %s", newest, err, all[2].ID)
	}
	if recs, err := l.Read(ctx, all[0].ID, 1); err != nil || len(recs) != 1 || recs[0].ID != all[1].ID {
		t.Errorf("Read after the first, 1 = %+v, %v; want the second", recs, err)
	}
	if recs, err := l.Read(ctx, newest, 10); err != nil || len(recs) != 0 {
		t.Errorf("Read after the newest = %+v, %v; want none", recs, err)
	}
}

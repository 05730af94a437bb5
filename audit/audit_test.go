package audit_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

func TestSampled(t *testing.T) {
	tests := []struct {
		sample   float64
		min, max int // of 10,000 ids
	}{
		{0, 0, 0},
		{1, 10000, 10000},
		{0.1, 800, 1200},
		{0.5, 4700, 5300},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.sample), func(t *testing.T) {
			l := audit.New(nil, audit.Options{Sample: tt.sample})
			n := 0
			for i := range 10000 {
				if l.Sampled(fmt.Sprintf("d_%032x", i)) {
					n++
				}
			}
			if n < tt.min || n > tt.max {
				t.Errorf("%d of 10000 sampled, want %d..%d", n, tt.min, tt.max)
			}
		})
	}
	l := audit.New(nil, audit.Options{Sample: 0.3})
	if l.Sampled("d_same") != l.Sampled("d_same") {
		t.Error("sampling is not stable for one id")
	}
}

func TestRecordDropsWhenFull(t *testing.T) {
	l := audit.New(nil, audit.Options{Sample: 1, Buffer: 2})
	for i := range 3 {
		ok := l.Record(audit.Entry{DecisionID: fmt.Sprint(i)})
		if want := i < 2; ok != want {
			t.Errorf("Record %d = %v, want %v", i, ok, want)
		}
	}
	if got := l.Stats().Dropped; got != 1 {
		t.Errorf("Dropped = %d, want 1", got)
	}
}

// Entries written by Run come back through Tail, and erasing a user (the
// store's Delete) removes that user's entries only; against a real
// redis-server.
func TestWriteTailDelete(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	l := audit.New(rdb, audit.Options{Sample: 1, Batch: 3})
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()

	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	want := []audit.Entry{
		{DecisionID: "d1", At: at, UserID: "alice", Channel: "sms", Verdict: "send", OfferID: "o1", ProfileVersion: 3, RulesVersion: "v1",
			Reasons: []audit.Reason{{RuleID: "o1", Message: "offer o1 is eligible"}}},
		{DecisionID: "d2", At: at, UserID: "bob", Channel: "web", Verdict: "none", Degraded: true, RulesVersion: "v1",
			Reasons: []audit.Reason{{RuleID: "fallback", Message: "profile read exceeded its budget of 4ms"}}},
		{DecisionID: "d3", At: at, UserID: "alice", Channel: "push", Verdict: "hold", Control: true, Stale: true, RulesVersion: "v1"},
	}
	for _, e := range want {
		if !l.Record(e) {
			t.Fatal("Record dropped an entry")
		}
	}
	stop()
	<-done // Run flushes what is queued before returning
	if st := l.Stats(); st.Written != 3 || st.Failed != 0 {
		t.Fatalf("Stats = %+v, want 3 written", st)
	}

	recs, err := l.Read(t.Context(), "0-0", 10)
	if err != nil || len(recs) != len(want) {
		t.Fatalf("Read = %d records, %v; want %d", len(recs), err, len(want))
	}
	var got []audit.Entry
	for _, r := range recs {
		if r.Err != nil {
			t.Fatalf("record %s: %v", r.ID, r.Err)
		}
		got = append(got, r.Entry)
	}
	for i := range want {
		if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
			t.Errorf("entry %d = %+v\nwant %+v", i, got[i], want[i])
		}
	}

	res, err := redisstore.New(rdb, redisstore.Options{}).Delete(t.Context(), "alice")
	if err != nil || res.AuditEntries != 2 {
		t.Fatalf("erasing alice = %+v, %v; want 2 audit entries", res, err)
	}
	left, err := rdb.XRange(t.Context(), audit.DefaultStream, "-", "+").Result()
	if err != nil || len(left) != 1 || left[0].Values["user_id"] != "bob" {
		t.Errorf("after erasure: %v, %v", left, err)
	}
}

func TestDecodeRejectsForeignEntries(t *testing.T) {
	for _, v := range []map[string]any{
		{},
		{"decision_id": "d", "at": "yesterday", "profile_version": "1"},
		{"decision_id": "d", "at": "2026-11-24T12:00:00Z", "profile_version": "x"},
		{"decision_id": "d", "at": "2026-11-24T12:00:00Z", "profile_version": "1", "reasons": "{"},
	} {
		if _, err := audit.Decode(v); !errors.Is(err, audit.ErrBadEntry) {
			t.Errorf("Decode(%v) = %v, want ErrBadEntry", v, err)
		}
	}
}

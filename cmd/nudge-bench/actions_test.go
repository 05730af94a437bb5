package main

import (
	"strconv"
	"testing"
	"time"
)

// Every block of --action-every events is one user of its own who views
// the trigger's category exactly 3 times and every other category at most
// once: the bundled trigger fires exactly once per block.
func TestActionEventsFireOncePerBlock(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, every := range []int{3, 4, 10, maxActionEvery} {
		c, err := parse(t, nil, "--workload", "actions", "--action-every", strconv.Itoa(every), "--prefix", "p")
		if err != nil {
			t.Fatal(err)
		}
		const blocks = 5
		users := map[string]map[string]int{} // user -> category -> views
		for i := range blocks * every {
			ev := c.actionEvent(i, now)
			if !ev.GetOccurredAt().AsTime().Equal(now) || ev.GetType() != "view" {
				t.Fatalf("every %d, event %d: %v", every, i, ev)
			}
			if got, ok := c.eventIndex(ev.GetEventId()); !ok || got != i {
				t.Fatalf("event id %q gives %d, %v; want %d", ev.GetEventId(), got, ok, i)
			}
			if users[ev.GetUserId()] == nil {
				users[ev.GetUserId()] = map[string]int{}
			}
			users[ev.GetUserId()][ev.GetCategory()]++
		}
		if len(users) != blocks {
			t.Fatalf("every %d: %d users, want %d", every, len(users), blocks)
		}
		for u, cats := range users {
			for cat, n := range cats {
				want := 1
				if cat == triggerCategory {
					want = 3
				}
				if n != want {
					t.Errorf("every %d: user %s viewed %s %d times, want %d", every, u, cat, n, want)
				}
			}
		}
	}
}

func TestEventIndexRefusesOtherRuns(t *testing.T) {
	c, err := parse(t, nil, "--prefix", "run1")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"run2-5", "run1-", "run1-x", "run1--1", "run15", ""} {
		if i, ok := c.eventIndex(id); ok {
			t.Errorf("eventIndex(%q) = %d, true; want false", id, i)
		}
	}
	if i, ok := c.eventIndex(c.eventID(42)); !ok || i != 42 {
		t.Errorf("round trip: %d, %v", i, ok)
	}
}

func TestActionAndPeerChecks(t *testing.T) {
	tests := []struct {
		name string
		aj   actionsJSON
		ok   bool
	}{
		{"all delivered", actionsJSON{Blocks: 10, Fired: 10, Received: 10}, true},
		{"missing", actionsJSON{Blocks: 10, Fired: 10, Received: 9, Missing: 1}, false},
		{"fewer fired than built", actionsJSON{Blocks: 10, Fired: 9, Received: 9}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok := true
			for _, c := range actionChecks(tt.aj) {
				ok = ok && c.OK
			}
			if ok != tt.ok {
				t.Errorf("checks ok %v, want %v", ok, tt.ok)
			}
		})
	}
	if c := peerCheck(txnJSON{Committed: 5, CountBefore: 10, CountAfter: 15}); !c.OK {
		t.Errorf("exact growth refused: %+v", c)
	}
	if c := peerCheck(txnJSON{Committed: 5, CountBefore: 10, CountAfter: 14}); c.OK {
		t.Errorf("lost update accepted: %+v", c)
	}
}

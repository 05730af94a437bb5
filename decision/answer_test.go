package decision

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// answerRules has an sms offer for users who viewed phones, and a push
// fallback.
const answerRules = `version: 1
offers:
  - id: phones-coupon
    channels: [sms]
    when: profile.count("view", "phones", duration("24h")) >= 2
    template: phones_coupon
fallbacks:
  push: {offer_id: push-fallback, template: generic_push}
`

func TestAnswer(t *testing.T) {
	r := mustParse(t, answerRules)
	now := t0.Add(time.Hour)
	viewer := history(t, r, views("v", "phones", t0, time.Minute, 2)...)
	viewer.Version = 7
	corrupt := fmt.Errorf("user %q: %w: bad varint", "u1", profile.ErrCorrupt)
	addr := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 6379}
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: addr, Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	timedOut := &net.OpError{Op: "read", Net: "tcp", Addr: addr, Err: os.ErrDeadlineExceeded}
	tests := []struct {
		name        string
		read        Read
		channel     string
		minVersion  uint64
		wantVerdict Verdict
		wantOffer   string
		degraded    bool
		stale       bool
		wantReason  string // a reason's message contains it
	}{
		{"decided", Read{Profile: viewer}, "sms", 0, VerdictSend, "phones-coupon", false, false, "phones-coupon"},
		{"unknown user decides on an empty profile", Read{Err: fmt.Errorf("user %q: %w", "u1", profile.ErrNotFound)}, "sms", 0, VerdictNone, "", false, false, "no eligible offer"},
		{"read past its budget", Read{Err: context.DeadlineExceeded, Budget: 8 * time.Millisecond}, "push", 0, VerdictSend, "push-fallback", true, false,
			"profile read exceeded its budget of 8ms"},
		{"store unavailable, no fallback", Read{Err: fmt.Errorf("%w: %w", profile.ErrUnavailable, refused)}, "sms", 0, VerdictNone, "", true, false,
			"profile store unavailable: connection refused"},
		{"store timed out: no address in the reason", Read{Err: fmt.Errorf("%w: %w", profile.ErrUnavailable, timedOut)}, "sms", 0, VerdictNone, "", true, false,
			"profile store unavailable: timed out"},
		{"the breaker's own message", Read{Err: errors.New("the last 3 reads failed, so reads are paused for 50ms")}, "sms", 0, VerdictNone, "", true, false,
			"profile store unavailable: the last 3 reads failed"},
		{"corrupt profile", Read{Err: corrupt}, "sms", 0, VerdictNone, "", true, false, "stored profile cannot be decoded"},
		{"read-your-writes met", Read{Profile: viewer}, "sms", 7, VerdictSend, "phones-coupon", false, false, "phones-coupon"},
		{"stale profile", Read{Profile: viewer}, "sms", 8, VerdictNone, "", false, true,
			"stored profile is at version 7, older than the requested minimum 8"},
		{"unknown user asked with a minimum", Read{Err: profile.ErrNotFound}, "sms", 1, VerdictNone, "", false, true,
			"stored profile is at version 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := r.Answer(tt.read, Request{UserID: "u1", Channel: tt.channel, MinVersion: tt.minVersion, ID: "d_1"}, now)
			offer := ""
			if d.Offer != nil {
				offer = d.Offer.ID
			}
			if d.Verdict != tt.wantVerdict || offer != tt.wantOffer || d.Degraded != tt.degraded || d.Stale != tt.stale {
				t.Errorf("Answer = %v offer %q degraded %v stale %v, want %v %q %v %v", d.Verdict, offer, d.Degraded, d.Stale,
					tt.wantVerdict, tt.wantOffer, tt.degraded, tt.stale)
			}
			if d.ID != "d_1" || d.RulesVersion != r.Version() {
				t.Errorf("id %q, rules version %q; want d_1, %q (stamped once, whatever the path)", d.ID, d.RulesVersion, r.Version())
			}
			if !slices.ContainsFunc(d.Reasons, func(r Reason) bool { return strings.Contains(r.Message, tt.wantReason) }) {
				t.Errorf("reasons %+v, want one containing %q", d.Reasons, tt.wantReason)
			}
			if strings.Contains(d.Reasons[0].Message, "10.0.0.9") {
				t.Errorf("the reason %q names an internal address", d.Reasons[0].Message)
			}
			if tt.degraded && d.Reasons[0].RuleID != ruleDegraded {
				t.Errorf("degraded answer's first reason %+v, want rule %q", d.Reasons[0], ruleDegraded)
			}
		})
	}
}

func TestReserve(t *testing.T) {
	r := mustParse(t, answerRules)
	now := t0.Add(time.Hour)
	const ttl = 5 * time.Minute
	req := func(id string) Request { return Request{UserID: "u1", Channel: "sms", ID: id} }

	t.Run("a send holds a cap slot until the ttl, and replays", func(t *testing.T) {
		p := history(t, r, views("v", "phones", t0, time.Minute, 2)...)
		first := r.Reserve(p, req("d_1"), "k1", ttl, now)
		wantExpiry := now.Add(ttl).Truncate(time.Millisecond)
		if !first.Fresh || first.Verdict != VerdictSend || first.Hold == nil || first.Hold.Key != "k1" || !first.Hold.ExpiresAt.Equal(wantExpiry) {
			t.Fatalf("first Reserve = %+v, want a fresh send holding k1 until %v", first, wantExpiry)
		}
		if n := p.Reserved("sms", now); n != 1 {
			t.Errorf("Reserved(sms) = %d, want 1", n)
		}
		// Asked again with the key (a retry), even by another decision id:
		// the same answer, nothing recorded again.
		again := r.Reserve(p, req("d_2"), "k1", ttl, now.Add(time.Minute))
		if again.Fresh || !reflect.DeepEqual(again.Decision, first.Decision) {
			t.Errorf("replay = %+v\nwant %+v, not fresh", again, first)
		}
		// Past the ttl the slot is free and the key decides anew.
		later := r.Reserve(p, req("d_3"), "k1", ttl, now.Add(ttl+time.Millisecond))
		if !later.Fresh || later.ID != "d_3" {
			t.Errorf("after the ttl: %+v, want a fresh decision d_3", later)
		}
	})
	t.Run("no send holds nothing but replays", func(t *testing.T) {
		p := &profile.Profile{}
		d := r.Reserve(p, req("d_1"), "k1", ttl, now)
		if !d.Fresh || d.Verdict != VerdictNone || d.Hold != nil || p.Reserved("", now) != 0 {
			t.Errorf("Reserve = %+v (reserved %d), want a fresh none without a hold", d, p.Reserved("", now))
		}
		if again := r.Reserve(p, req("d_2"), "k1", ttl, now); again.Fresh || again.ID != "d_1" {
			t.Errorf("replay = %+v, want d_1 replayed", again)
		}
	})
	t.Run("stale profile records nothing", func(t *testing.T) {
		p := &profile.Profile{Version: 3}
		q := req("d_1")
		q.MinVersion = 4
		d := r.Reserve(p, q, "k1", ttl, now)
		if d.Fresh || !d.Stale || d.Verdict != VerdictNone || len(p.Reservations) != 0 || d.ID != "d_1" {
			t.Errorf("Reserve = %+v with %d reservations, want a stale none, nothing recorded", d, len(p.Reservations))
		}
	})
	t.Run("a stored answer this version cannot read is decided again", func(t *testing.T) {
		p := history(t, r, views("v", "phones", t0, time.Minute, 2)...)
		p.Reserve(profile.Reservation{Key: "k1", Channel: "sms", Holds: true, At: now, Expires: now.Add(ttl), Decision: []byte{0x08, 0x02}})
		d := r.Reserve(p, req("d_1"), "k1", ttl, now)
		if !d.Fresh || d.Verdict != VerdictSend || len(p.Reservations) != 1 || p.Reserved("sms", now) != 1 {
			t.Errorf("Reserve = %+v, %d reservations; want a fresh send replacing the unreadable one", d, len(p.Reservations))
		}
	})
}

func TestReserveFailed(t *testing.T) {
	r := mustParse(t, answerRules)
	d := r.ReserveFailed(Request{Channel: "push", ID: "d_1"}, context.DeadlineExceeded, 8*time.Millisecond)
	// Never the fallback's send: a send without its reservation could
	// break a frequency cap.
	if d.Verdict != VerdictNone || !d.Degraded || d.Offer != nil || d.ID != "d_1" || d.RulesVersion != r.Version() {
		t.Errorf("ReserveFailed = %+v, want a degraded none stamped d_1", d)
	}
	if len(d.Reasons) != 2 || !strings.Contains(d.Reasons[0].Message, "budget of 8ms") || !strings.Contains(d.Reasons[1].Message, "same idempotency_key") {
		t.Errorf("reasons %+v", d.Reasons)
	}
}

// TestStepChanged: a step reports a change when, and only when, an event
// was applied; duplicates and rejections leave the stored profile alone.
func TestStepChanged(t *testing.T) {
	r := mustParse(t, seedRules)
	now := t0.Add(time.Hour)
	p := &profile.Profile{}
	applied := r.Step(profile.Limits{})(p, views("v", "phones", t0, time.Minute, 1), now)
	tests := []struct {
		name   string
		events []profile.Event
		want   bool
	}{
		{"no events", nil, false},
		{"only duplicates", views("v", "phones", t0, time.Minute, 1), false},
		{"only rejected", []profile.Event{view("old", "phones", now.Add(-100*24*time.Hour))}, false}, // past the retention
		{"one applied among others", append(views("v", "phones", t0, time.Minute, 1), view("new", "phones", t0)), true},
	}
	if !applied.Changed {
		t.Fatalf("a first view: %+v, want Changed", applied)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.Step(profile.Limits{})(p, tt.events, now); got.Changed != tt.want {
				t.Errorf("Changed = %v, want %v (results %+v)", got.Changed, tt.want, got.Results)
			}
		})
	}
}

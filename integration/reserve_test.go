package integration

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

func (e *env) reserveSMS(t *testing.T, user, key string) *nudgev1.Decision {
	t.Helper()
	resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms", Reserve: true, IdempotencyKey: key})
	if err != nil {
		t.Errorf("GetDecision reserve %s: %v", key, err)
		return nil
	}
	return resp.GetDecision()
}

// lastSlot makes a user who wants the phones coupon and has 1 of the 2
// SMS a day left.
func lastSlot(t *testing.T, e *env, user string) {
	t.Helper()
	phoneFan(t, e, user, daytimeTZ())
	e.publish(t, sent(user, "sms", "phones-coupon", time.Hour))
}

// Two senders, on two servers, reserving the last cap slot of one user at
// the same time: exactly one gets SEND, in every one of 1,000 trials.
func TestReservationLastSlotGoesToOneSender(t *testing.T) {
	a := newEnv(t, redisstore.Options{MaxAttempts: 1000})
	b := a.addServer(t, redisstore.Options{MaxAttempts: 1000})
	const trials = 1000
	for i := range trials {
		user := fmt.Sprintf("contested-%d", i)
		lastSlot(t, a, user)
		var wg sync.WaitGroup
		got := make([]*nudgev1.Decision, 2)
		for s, e := range []*env{a, b} {
			wg.Go(func() { got[s] = e.reserveSMS(t, user, fmt.Sprintf("%s-sender-%d", user, s)) })
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		sends := 0
		for _, d := range got {
			switch d.GetVerdict() {
			case nudgev1.Verdict_VERDICT_SEND:
				sends++
				if d.GetReservation().GetIdempotencyKey() == "" || d.GetReservation().GetExpiresAt() == nil {
					t.Fatalf("trial %d: SEND without its reservation: %v", i, d)
				}
			case nudgev1.Verdict_VERDICT_NONE:
				if !hasReason(d, "sms-daily-cap") || d.GetReservation() != nil {
					t.Fatalf("trial %d: the loser's decision %v is not blocked by the cap", i, d)
				}
			default:
				t.Fatalf("trial %d: decision %v", i, d)
			}
			if d.GetDegraded() {
				t.Fatalf("trial %d: degraded %v", i, d)
			}
		}
		if sends != 1 {
			t.Fatalf("trial %d: %d senders got SEND for the last slot, want exactly 1: %v", i, sends, got)
		}
	}
}

// Asking again with the same key returns the same decision; a different
// key does not get the held slot.
func TestReservationIsIdempotentAndConfirmed(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const user = "steady"
	lastSlot(t, e, user)
	first := e.reserveSMS(t, user, "k1")
	if first.GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
		t.Fatalf("first reserve = %v, want SEND", first)
	}
	again := e.reserveSMS(t, user, "k1")
	if again.GetDecisionId() != first.GetDecisionId() || again.GetVerdict() != first.GetVerdict() {
		t.Errorf("same key again = %v, want decision %s", again, first.GetDecisionId())
	}
	if other := e.reserveSMS(t, user, "k2"); other.GetVerdict() != nudgev1.Verdict_VERDICT_NONE {
		t.Errorf("another key while k1 holds the last slot = %v, want NONE", other)
	}
	// A plain decision sees the held slot too.
	if d := e.decideSMS(t, user); d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE {
		t.Errorf("plain decision while the slot is held = %v, want NONE", d)
	}

	// The sender confirms: the reservation becomes a send; still capped.
	confirm := sent(user, "sms", "phones-coupon", 0)
	confirm.Attributes["idempotency_key"] = "k1"
	e.publish(t, confirm)
	p, err := e.store.Get(ctxT(t), user)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Reservations) != 1 || p.Reservations[0].Key != "k2" || p.Sends("sms", time.Now().Add(-24*time.Hour)) != 2 {
		t.Errorf("after confirming k1: reservations %+v, %d sms sends; want only k2 (not holding) and 2 sends", p.Reservations, p.Sends("sms", time.Now().Add(-24*time.Hour)))
	}
	if d := e.decideSMS(t, user); d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE {
		t.Errorf("after the confirmed send = %v, want NONE by the cap", d)
	}
}

// An unconfirmed reservation lapses and its slot returns.
func TestReservationLapses(t *testing.T) {
	const ttl = 200 * time.Millisecond
	e := newEnvConfig(t, redisstore.Options{}, server.Config{ReservationTTL: ttl})
	const user = "forgetful"
	lastSlot(t, e, user)
	d := e.reserveSMS(t, user, "k1")
	if d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
		t.Fatalf("reserve = %v", d)
	}
	expires := d.GetReservation().GetExpiresAt().AsTime()
	if blocked := e.reserveSMS(t, user, "k2"); blocked.GetVerdict() != nudgev1.Verdict_VERDICT_NONE && time.Now().Before(expires) {
		t.Fatalf("second sender before the lapse = %v, want NONE", blocked)
	}
	// Once the expiry the server announced has passed, the slot is free.
	// Poll (bounded) rather than trust one clock reading.
	deadline := expires.Add(10 * time.Second)
	for i := 0; ; i++ {
		d := e.reserveSMS(t, user, fmt.Sprintf("k3-%d", i))
		if d.GetVerdict() == nudgev1.Verdict_VERDICT_SEND {
			if now := time.Now(); now.Before(expires) {
				t.Errorf("the slot came back at %v, before the announced expiry %v", now, expires)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot did not come back within 10 s of its expiry %v: %v", expires, d)
		}
		time.Sleep(20 * time.Millisecond) // polling, bounded by deadline
	}
}

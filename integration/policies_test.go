package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Issue 3's policy acceptance, through the gRPC server against a real
// redis-server with the bundled examples/rules.yaml, at wall-clock time.
// Users get a time zone where it is now daytime (or night, for the quiet
// hours test), so the tests hold whenever they run.

func (e *env) decideSMS(t *testing.T, user string) *nudgev1.Decision {
	t.Helper()
	resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
	if err != nil {
		t.Fatalf("GetDecision: %v", err)
	}
	return resp.GetDecision()
}

func phoneFan(t *testing.T, e *env, user string, tz string) {
	t.Helper()
	first := ev(user, "view", "phones", 9*time.Minute)
	first.Attributes = map[string]string{"tz": tz}
	for _, r := range e.publish(t, first, ev(user, "view", "phones", 6*time.Minute), ev(user, "view", "phones", 3*time.Minute)).Results {
		wantStatus(t, r, applied)
	}
}

func sent(user, channel, offer string, ago time.Duration) *nudgev1.Event {
	e := ev(user, "message_sent", "", ago)
	e.Channel = channel
	e.Attributes = map[string]string{"offer_id": offer}
	return e
}

// A cap of 2 SMS per 24 h holds across 3 decisions with the senders'
// outcome events in between.
func TestFrequencyCapHoldsAcrossDecisions(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const user = "capped"
	phoneFan(t, e, user, daytimeTZ())
	for i := range 3 {
		d := e.decideSMS(t, user)
		if i < 2 {
			if d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND || d.GetOffer().GetId() != "phones-coupon" {
				t.Fatalf("decision %d = %v, want SEND phones-coupon", i+1, d)
			}
			e.publish(t, sent(user, "sms", d.GetOffer().GetId(), 0)) // the sender reports it
			continue
		}
		if d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || !hasReason(d, "sms-daily-cap") {
			t.Fatalf("decision 3 after 2 SMS = %v, want NONE blocked by sms-daily-cap", d)
		}
	}
	// Push is a different channel, under its own cap.
	resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "push"})
	if err != nil || resp.GetDecision().GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
		t.Errorf("push after 2 SMS = %v, %v; want SEND", resp, err)
	}
}

// Quiet hours: a user for whom it is now 23:xx local time gets HOLD with
// not_before at 08:00 the next local morning, whatever the server's zone.
func TestQuietHoursHoldUntilLocalMorning(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	now := time.Now().UTC()
	off := (23 - now.Hour() + 24) % 24 // hours east of UTC where it is 23:xx
	if off > 14 {
		off -= 24
	}
	tz := "Etc/UTC"
	switch {
	case off > 0:
		tz = fmt.Sprintf("Etc/GMT-%d", off)
	case off < 0:
		tz = fmt.Sprintf("Etc/GMT+%d", -off)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatal(err)
	}
	const user = "night-owl"
	phoneFan(t, e, user, tz)
	d := e.decideSMS(t, user)
	local := time.Now().In(loc)
	if local.Hour() != 23 {
		t.Fatalf("test setup: local hour in %s is %d, want 23", tz, local.Hour())
	}
	want := time.Date(local.Year(), local.Month(), local.Day()+1, 8, 0, 0, 0, loc)
	if d.GetVerdict() != nudgev1.Verdict_VERDICT_HOLD || d.GetOffer().GetId() != "phones-coupon" || !hasReason(d, "night") {
		t.Fatalf("decision at 23:xx in %s = %v, want HOLD phones-coupon by night", tz, d)
	}
	if got := d.GetNotBefore().AsTime(); !got.Equal(want) {
		t.Errorf("not_before = %v, want %v (08:00 next morning in %s)", got, want.UTC(), tz)
	}
	// Web is not an intrusive channel: no quiet hours.
	resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "web"})
	if err != nil || resp.GetDecision().GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
		t.Errorf("web at night = %v, %v; want SEND", resp, err)
	}
}

// An unsubscribe suppresses the channel until a subscribe.
func TestUnsubscribeSuppressesUntilSubscribe(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const user = "fickle"
	phoneFan(t, e, user, daytimeTZ())
	unsub := ev(user, "unsubscribe", "", 2*time.Minute)
	unsub.Channel = "sms"
	e.publish(t, unsub)
	if d := e.decideSMS(t, user); d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || !hasReason(d, "consent") {
		t.Errorf("after unsubscribe: %v, want NONE by consent", d)
	}
	sub := ev(user, "subscribe", "", time.Minute)
	sub.Channel = "sms"
	e.publish(t, sub)
	if d := e.decideSMS(t, user); d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
		t.Errorf("after subscribe again: %v, want SEND", d)
	}
}

// A purchase in a category suppresses that category's offer.
func TestPurchaseCooldownSuppressesCategoryOffer(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const user = "new-phone"
	phoneFan(t, e, user, daytimeTZ())
	if d := e.decideSMS(t, user); d.GetOffer().GetId() != "phones-coupon" {
		t.Fatalf("before the purchase: %v", d)
	}
	e.publish(t, ev(user, "purchase", "phones", time.Minute))
	if d := e.decideSMS(t, user); d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || !hasReason(d, "recent-purchase") {
		t.Errorf("after buying a phone: %v, want NONE with the recent-purchase reason", d)
	}
}

// The A/B control group of cart-reminder (control 0.1) is stable per user
// and about 10% of 10,000 users, decided in batches.
func TestControlGroupStableAndProportional(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const users = 10000
	var events []*nudgev1.Event
	for u := range users {
		e := ev(fmt.Sprintf("cart-%d", u), "add_to_cart", "phones", 5*time.Minute)
		e.Attributes = map[string]string{"tz": daytimeTZ()}
		events = append(events, e)
	}
	for i := 0; i < len(events); i += 1000 {
		e.publish(t, events[i:i+1000]...)
	}
	control := func() map[string]bool {
		in := map[string]bool{}
		for start := 0; start < users; start += 1000 {
			var qs []*nudgev1.DecisionQuery
			for u := start; u < start+1000; u++ {
				qs = append(qs, &nudgev1.DecisionQuery{UserId: fmt.Sprintf("cart-%d", u), Channel: "push"})
			}
			resp, err := e.decide.BatchGetDecisions(ctxT(t), &nudgev1.BatchGetDecisionsRequest{Queries: qs})
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range resp.GetResults() {
				d := r.GetDecision()
				switch {
				case d.GetControl():
					if d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE {
						t.Fatalf("control decision %v is not NONE", d)
					}
					in[qs[i].UserId] = true
				case d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND || d.GetOffer().GetId() != "cart-reminder":
					t.Fatalf("treatment decision for %s = %v, want SEND cart-reminder", qs[i].UserId, d)
				}
			}
		}
		return in
	}
	first, second := control(), control()
	if len(first) < 800 || len(first) > 1200 {
		t.Errorf("%d of %d users in the control group, want about 10%%", len(first), users)
	}
	if len(first) != len(second) {
		t.Fatalf("control group changed size between two rounds: %d, %d", len(first), len(second))
	}
	for u := range first {
		if !second[u] {
			t.Fatalf("user %s left the control group between two rounds", u)
		}
	}
}

// explain: true returns the evaluation trace.
func TestExplainTrace(t *testing.T) {
	e := newEnv(t, redisstore.Options{})
	const user = "curious"
	phoneFan(t, e, user, daytimeTZ())
	resp, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms", Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, s := range resp.GetDecision().GetTrace() {
		steps = append(steps, s.GetRuleId())
	}
	for _, want := range []string{"consent", "sms-daily-cap", "global-weekly-cap", "phones-coupon", "night"} {
		if !strings.Contains(strings.Join(steps, ","), want) {
			t.Errorf("trace %v lacks %s", steps, want)
		}
	}
	plain, err := e.decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
	if err != nil || len(plain.GetDecision().GetTrace()) != 0 {
		t.Errorf("a decision without explain carries a trace: %v, %v", plain, err)
	}
}

func hasReason(d *nudgev1.Decision, ruleID string) bool {
	for _, r := range d.GetReasons() {
		if r.GetRuleId() == ruleID {
			return true
		}
	}
	return false
}

package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// cartRules is the cart-abandonment journey of issue 15 (docs/rules.md,
// "Journeys").
const cartRules = `version: 1
triggers:
  - id: cart-abandoned
    on: [add_to_cart]
    when: event.item_id != ""
    wait: 1h
    unless: [purchase]
    cooldown: 24h
    action: {channel: push, template: cart_reminder, payload_expr: {item: event.item_id}}
    then:
      - id: cart-abandoned-email
        wait: 23h
        unless: [purchase]
        when: profile.count("view", duration("24h")) > 0
        action: {channel: email, template: cart_reminder_2}
`

// TestRulesTestTimers: rules test lists the timers an event schedules and
// what each does at its due time.
func TestRulesTestTimers(t *testing.T) {
	write := tempWriter(t)
	cart := write("cart.yaml", cartRules)
	// The same journey, with an e-mail whose when holds for a lone cart.
	always := write("always.yaml", strings.Replace(cartRules, `profile.count("view", duration("24h")) > 0`, `profile.total("add_to_cart") > 0`, 1))
	added := write("add.json", `{"event_id": "c1", "user_id": "u42", "type": "add_to_cart", "item_id": "sku-1", "occurred_at": "2026-11-24T12:00:00Z"}`)
	late := write("late.json", `{"event_id": "c2", "user_id": "u42", "type": "add_to_cart", "item_id": "sku-2", "occurred_at": "2026-11-24T12:00:00Z"}`)
	bought := write("bought.json", `{"events": [
  {"event_id": "b1", "user_id": "u42", "type": "purchase", "occurred_at": "2026-11-24T12:30:00Z"}]}`)

	tests := []struct {
		name    string
		args    []string
		wantOut []string
		notOut  []string
	}{
		{"the push at +1h, the e-mail step at +24h (no view: dropped)",
			[]string{"rules", "test", cart, "--event", added, "--channels", "push"},
			[]string{
				"event c1: applied\n  no trigger fires\n  timer cart-abandoned step 0: due 2026-11-24T13:00:00Z\n  if no other event arrives:\n",
				"    at 2026-11-24T13:00:00Z: fires a_",
				": cart-abandoned via push, template cart_reminder, payload map[item:sku-1], due 2026-11-24T13:00:00Z\n",
				"    at 2026-11-24T13:00:00Z: schedules cart-abandoned-email, due 2026-11-25T12:00:00Z\n",
				"    at 2026-11-25T12:00:00Z: drops cart-abandoned-email: when\n",
			}, nil},
		{"an e-mail whose when holds fires at +24h",
			[]string{"rules", "test", always, "--event", added, "--channels", "push"},
			[]string{"    at 2026-11-25T12:00:00Z: fires a_", ": cart-abandoned-email via email, template cart_reminder_2, payload map[], due 2026-11-25T12:00:00Z\n"},
			[]string{"drops"}},
		{"a purchase already in the history cancels the journey",
			[]string{"rules", "test", cart, "--profile", bought, "--event", added, "--now", "2026-11-24T12:40:00Z", "--channels", "push"},
			[]string{"event c1: applied\n  no trigger fires\n  cancels cart-abandoned\ndecision on push"},
			[]string{"timer ", "if no other event arrives"}},
		{"an event past its due time is judged at once",
			[]string{"rules", "test", cart, "--event", late, "--now", "2026-11-24T14:00:00Z", "--channels", "push"},
			[]string{"event c2: applied\n  fires a_", "cart-abandoned via push, template cart_reminder, payload map[item:sku-2], due 2026-11-24T13:00:00Z\n",
				"  timer cart-abandoned step 1: due 2026-11-25T12:00:00Z\n", "    at 2026-11-25T12:00:00Z: drops cart-abandoned-email: when\n"},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if got := run(tt.args, &out, &errOut); got != 0 {
				t.Fatalf("status %d; stdout:\n%s\nstderr:\n%s", got, out.String(), errOut.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			for _, not := range tt.notOut {
				if strings.Contains(out.String(), not) {
					t.Errorf("output has %q:\n%s", not, out.String())
				}
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if got := run([]string{"rules", "test", cart, "--event", added, "--channels", "push", "--json"}, &out, &errOut); got != 0 {
			t.Fatalf("status %d: %s", got, errOut.String())
		}
		var rep testReport
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out.String())
		}
		due := time.Date(2026, 11, 24, 13, 0, 0, 0, time.UTC)
		if len(rep.Timers) != 1 || rep.Timers[0].Trigger != "cart-abandoned" || !rep.Timers[0].Due.Equal(due) {
			t.Errorf("timers %+v", rep.Timers)
		}
		if len(rep.Later) != 2 || len(rep.Later[0].Actions) != 1 || !rep.Later[0].Actions[0].DueAt.Equal(due) ||
			!rep.Later[1].At.Equal(due.Add(23*time.Hour)) || len(rep.Later[1].Actions) != 0 {
			t.Errorf("later %+v", rep.Later)
		}
	})
}

package webhook

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		err      error
		timedOut bool
		want     Outcome
		reason   string
	}{
		{name: "200", status: 200, want: Delivered},
		{name: "202", status: 202, want: Delivered},
		{name: "204", status: 204, want: Delivered},
		{name: "500", status: 500, want: Retry, reason: Reason5xx},
		{name: "502", status: 502, want: Retry, reason: Reason5xx},
		{name: "503", status: 503, want: Retry, reason: Reason5xx},
		{name: "408 is retried", status: http.StatusRequestTimeout, want: Retry, reason: Reason4xx},
		{name: "429 is retried", status: http.StatusTooManyRequests, want: Retry, reason: Reason4xx},
		{name: "400 waits for redelivery", status: 400, want: Refused, reason: Reason4xx},
		{name: "401", status: 401, want: Refused, reason: Reason4xx},
		{name: "404", status: 404, want: Refused, reason: Reason4xx},
		{name: "413", status: 413, want: Refused, reason: Reason4xx},
		{name: "301 is not followed", status: 301, want: Refused, reason: Reason3xx},
		{name: "307", status: 307, want: Refused, reason: Reason3xx},
		{name: "a status out of range", status: 600, want: Retry, reason: ReasonOther},
		{name: "1xx as final", status: 199, want: Retry, reason: ReasonOther},
		{name: "timeout", err: context.DeadlineExceeded, timedOut: true, want: Retry, reason: ReasonTimeout},
		{name: "connection refused", err: errors.New("connect: connection refused"), want: Retry, reason: ReasonConnection},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := Classify(tc.status, tc.err, tc.timedOut)
			if got != tc.want || reason != tc.reason {
				t.Errorf("Classify(%d, %v, %v) = %s, %q; want %s, %q", tc.status, tc.err, tc.timedOut, got, reason, tc.want, tc.reason)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	for _, tc := range []struct {
		name string
		n    int
		u    float64
		want time.Duration
	}{
		{name: "first failure, least jitter", n: 1, u: 0, want: 250 * time.Millisecond},
		{name: "first failure, no jitter", n: 1, u: 1, want: 500 * time.Millisecond},
		{name: "first failure, half", n: 1, u: 0.5, want: 375 * time.Millisecond},
		{name: "second doubles", n: 2, u: 1, want: time.Second},
		{name: "third", n: 3, u: 1, want: 2 * time.Second},
		{name: "seventh reaches the cap", n: 7, u: 1, want: 30 * time.Second},
		{name: "capped", n: 8, u: 1, want: 30 * time.Second},
		{name: "capped, least jitter", n: 50, u: 0, want: 15 * time.Second},
		{name: "no overflow however many", n: math.MaxInt32, u: 1, want: 30 * time.Second},
		{name: "n 0 as 1", n: 0, u: 1, want: 500 * time.Millisecond},
		{name: "u out of range is clamped", n: 1, u: 7, want: 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.Delay(tc.n, tc.u); got != tc.want {
				t.Errorf("Delay(%d, %v) = %v, want %v", tc.n, tc.u, got, tc.want)
			}
		})
	}
	// Whatever the draw: within [d/2, d], never shrinking from one
	// failure to the next by more than the jitter, never above Max.
	r := rand.New(rand.NewPCG(1, 2))
	for n := 1; n < 40; n++ {
		d := min(b.Min<<min(n-1, 20), b.Max)
		for range 100 {
			got := b.Delay(n, r.Float64())
			if got < d/2 || got > d {
				t.Fatalf("Delay(%d) = %v, outside [%v, %v]", n, got, d/2, d)
			}
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		header string
		want   time.Duration
		ok     bool
	}{
		{header: "", ok: false},
		{header: "7", want: 7 * time.Second, ok: true},
		{header: " 0 ", want: 0, ok: true},
		{header: "-3", ok: false},
		{header: "soon", ok: false},
		{header: "Tue, 24 Nov 2026 12:00:30 GMT", want: 30 * time.Second, ok: true},
		{header: "Tue, 24 Nov 2026 11:00:00 GMT", want: 0, ok: true}, // past: at once
	} {
		got, ok := retryAfter(tc.header, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.header, got, ok, tc.want, tc.ok)
		}
	}
}

func TestChannelFilter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		channels []string
		channel  string
		want     bool
	}{
		{name: "no channels: all", channel: "sms", want: true},
		{name: "listed", channels: []string{"sms", "push"}, channel: "push", want: true},
		{name: "not listed", channels: []string{"sms"}, channel: "email", want: false},
		{name: "exact match only", channels: []string{"sms"}, channel: "SMS", want: false},
		{name: "an action without channel", channels: []string{"sms"}, channel: "", want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := wants(tc.channels, tc.channel); got != tc.want {
				t.Errorf("wants(%v, %q) = %v", tc.channels, tc.channel, got)
			}
		})
	}
}

func TestExpired(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	for _, tc := range []struct {
		name   string
		ackID  string
		maxAge time.Duration
		want   bool
	}{
		{name: "no limit", ackID: "3/1-0", want: false},
		{name: "young", ackID: "3/1799999999000-0", maxAge: time.Minute, want: false},
		{name: "old", ackID: "3/1799999000000-5", maxAge: time.Minute, want: true},
		{name: "exactly the age is kept", ackID: "0/1799999940000-0", maxAge: time.Minute, want: false},
		{name: "unknown shape is kept", ackID: "garbage", maxAge: time.Nanosecond, want: false},
		{name: "unknown id is kept", ackID: "1/x-0", maxAge: time.Nanosecond, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expired(tc.ackID, tc.maxAge, now); got != tc.want {
				t.Errorf("expired(%q, %v) = %v", tc.ackID, tc.maxAge, got)
			}
		})
	}
}

// The body is nudge.v1.Action in protojson: what the API's JSON decodes.
func TestEncodeActionIsTheAPIJSON(t *testing.T) {
	at := time.Date(2026, 11, 24, 12, 0, 0, 500, time.UTC)
	a := profile.Action{
		ID: "a_1", UserID: "u1", TriggerID: "t", Channel: "sms", Template: "coupon",
		Payload: map[string]string{"category": "phones"}, TriggeredAt: at, DueAt: at.Add(time.Hour),
		EventID: "e1", RulesVersion: "v1",
	}
	body, err := encodeAction(&a)
	if err != nil {
		t.Fatal(err)
	}
	var got nudgev1.Action
	if err := protojson.Unmarshal(body, &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	want := &nudgev1.Action{
		ActionId: "a_1", UserId: "u1", TriggerId: "t", Channel: "sms", Template: "coupon",
		Payload: map[string]string{"category": "phones"}, TriggeredAt: timestamppb.New(at), DueAt: timestamppb.New(at.Add(time.Hour)),
		EventId: "e1", RulesVersion: "v1",
	}
	if !proto.Equal(&got, want) {
		t.Errorf("decoded %v, want %v", &got, want)
	}
	for _, field := range []string{`"actionId"`, `"userId"`, `"triggeredAt"`} {
		if !strings.Contains(string(body), field) {
			t.Errorf("body %s lacks %s (protojson's default names)", body, field)
		}
	}
	// An action fired at once has no due time.
	a.DueAt = time.Time{}
	body, _ = encodeAction(&a)
	if strings.Contains(string(body), "dueAt") {
		t.Errorf("body %s has a dueAt", body)
	}
}

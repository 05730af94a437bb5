package client_test

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// interested publishes three phone views of user (in a time zone where it
// is daytime, so quiet hours never hold an SMS) and returns the profile
// version after them.
func interested(t *testing.T, c *client.Client, user string) uint64 {
	t.Helper()
	var version uint64
	p := c.NewPublisher(client.OnResult(func(r *nudgev1.EventResult) {
		version = max(version, r.GetProfileVersion())
	}))
	for i := range 3 {
		ev := view(fmt.Sprintf("%s-v%d", user, i), user, "phones")
		ev.Attributes = map[string]string{"tz": daytimeTZ()}
		if err := p.Publish(ctxT(t), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return version
}

func TestDecide(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	ctx := ctxT(t)
	version := interested(t, c, "dec-alice")
	if version == 0 {
		t.Fatal("no profile version in the results")
	}

	tests := []struct {
		name      string
		user      string
		channel   string
		opts      []client.DecideOption
		verdict   nudgev1.Verdict
		offer     string
		stale     bool
		wantTrace bool
	}{
		{name: "page category", user: "dec-alice", channel: "web",
			opts:    []client.DecideOption{client.WithPlacement("pdp"), client.WithContext(map[string]string{"category": "phones"}), client.WithMinProfileVersion(version)},
			verdict: nudgev1.Verdict_VERDICT_SEND, offer: "page-category-coupon"},
		{name: "unknown user gets the default", user: "dec-nobody", channel: "web",
			verdict: nudgev1.Verdict_VERDICT_SEND, offer: "web-welcome"},
		{name: "stale profile", user: "dec-alice", channel: "web",
			opts:    []client.DecideOption{client.WithMinProfileVersion(version + 100)},
			verdict: nudgev1.Verdict_VERDICT_NONE, stale: true},
		{name: "explain and budget", user: "dec-alice", channel: "sms",
			opts:    []client.DecideOption{client.WithExplain(), client.WithBudget(2 * time.Second)},
			verdict: nudgev1.Verdict_VERDICT_SEND, offer: "phones-coupon", wantTrace: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := c.Decide(ctx, tt.user, tt.channel, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if d.GetVerdict() != tt.verdict || d.GetOffer().GetId() != tt.offer || d.GetStale() != tt.stale {
				t.Errorf("got %s %q stale=%v (reasons %v), want %s %q stale=%v",
					d.GetVerdict(), d.GetOffer().GetId(), d.GetStale(), d.GetReasons(), tt.verdict, tt.offer, tt.stale)
			}
			if tt.wantTrace != (len(d.GetTrace()) > 0) {
				t.Errorf("trace of %d steps, want trace: %v", len(d.GetTrace()), tt.wantTrace)
			}
			if d.GetDegraded() {
				t.Error("degraded decision")
			}
		})
	}

	t.Run("reserve", func(t *testing.T) {
		d1, err := c.Decide(ctx, "dec-alice", "sms", client.WithReserve("send-1"))
		if err != nil {
			t.Fatal(err)
		}
		if d1.GetVerdict() != nudgev1.Verdict_VERDICT_SEND || d1.GetReservation().GetIdempotencyKey() != "send-1" {
			t.Fatalf("got %s reservation %v, want SEND reserved under send-1", d1.GetVerdict(), d1.GetReservation())
		}
		d2, err := c.Decide(ctx, "dec-alice", "sms", client.WithReserve("send-1"))
		if err != nil {
			t.Fatal(err)
		}
		if d2.GetDecisionId() != d1.GetDecisionId() {
			t.Errorf("same key gave decision %s, then %s", d1.GetDecisionId(), d2.GetDecisionId())
		}
	})

	t.Run("invalid request", func(t *testing.T) {
		_, err := c.Decide(ctx, "", "web")
		wantCode(t, err, codes.InvalidArgument)
	})
}

func TestDecideBatch(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	ctx := ctxT(t)
	version := interested(t, c, "batch-bob")
	ds, err := c.DecideBatch(ctx, []client.Query{
		{UserID: "batch-bob", Channel: "web", Placement: "pdp", Context: map[string]string{"category": "phones"}, MinProfileVersion: version},
		{UserID: "batch-nobody", Channel: "web"},
		{UserID: "batch-bob", Channel: "web", MinProfileVersion: version + 100},
	}, client.WithBudget(2*time.Second), client.WithExplain())
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		verdict nudgev1.Verdict
		offer   string
	}{
		{nudgev1.Verdict_VERDICT_SEND, "page-category-coupon"},
		{nudgev1.Verdict_VERDICT_SEND, "web-welcome"},
		{nudgev1.Verdict_VERDICT_NONE, ""},
	}
	if len(ds) != len(want) {
		t.Fatalf("%d decisions, want %d", len(ds), len(want))
	}
	for i, w := range want {
		if ds[i].GetVerdict() != w.verdict || ds[i].GetOffer().GetId() != w.offer {
			t.Errorf("query %d: got %s %q, want %s %q", i, ds[i].GetVerdict(), ds[i].GetOffer().GetId(), w.verdict, w.offer)
		}
	}
	if ds[0].ProfileVersion < version {
		t.Errorf("decided on version %d, want at least %d", ds[0].ProfileVersion, version)
	}
	if !ds[2].GetStale() {
		t.Error("query 2 is not stale")
	}

	_, err = c.DecideBatch(ctx, nil)
	wantCode(t, err, codes.InvalidArgument)
}

func TestDialSecurity(t *testing.T) {
	e := newEnv(t)
	t.Run("token needs TLS or an explicit opt-in", func(t *testing.T) {
		_, err := client.Dial(e.addr, client.WithToken("secret"))
		wantErr(t, err, client.ErrTokenNeedsTLS)
	})
	t.Run("token in plaintext when asked for", func(t *testing.T) {
		c, err := client.Dial(e.addr, client.WithToken("secret"), client.WithInsecure())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Decide(ctxT(t), "tok-user", "web"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TLS to a plaintext server fails", func(t *testing.T) {
		c, err := client.Dial(e.addr, client.WithTLS(&tls.Config{InsecureSkipVerify: true}), client.WithToken("secret"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Decide(ctxT(t), "tok-user", "web")
		wantCode(t, err, codes.Unavailable)
	})
}

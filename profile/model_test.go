package profile_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// t0 is a minute-aligned reference time; every model test works relative to
// it so expected minute buckets are easy to read.
var t0 = time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)

// defaults are the default limits, as ApplyEvent and Compact require.
var defaults = profile.Limits{}.WithDefaults()

func ev(id, typ, category string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: "u1", Type: typ, Category: category, OccurredAt: at}
}

// mustApply applies events in order at now and fails the test unless every
// one is applied.
func mustApply(t testing.TB, p *profile.Profile, now time.Time, l profile.Limits, events ...profile.Event) {
	t.Helper()
	for i := range events {
		if r := p.ApplyEvent(&events[i], now, l); r.Status != profile.Applied {
			t.Fatalf("ApplyEvent(%q) = %v %q, want applied", events[i].ID, r.Status, r.Reason)
		}
	}
}

func TestStatusString(t *testing.T) {
	tests := []struct {
		name   string
		status profile.Status
		want   string
	}{
		{"applied", profile.Applied, "applied"},
		{"duplicate", profile.Duplicate, "duplicate"},
		{"rejected", profile.Rejected, "rejected"},
		{"zero", 0, "unknown"},
		{"out of range", 42, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.status.String(); got != tt.want {
				t.Errorf("Status(%d).String() = %q, want %q", int(tt.status), got, tt.want)
			}
		})
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	want := profile.Limits{
		Retention:      90 * 24 * time.Hour,
		MinuteSpan:     25 * time.Hour,
		HourSpan:       8 * 24 * time.Hour,
		MaxFuture:      5 * time.Minute,
		DedupMax:       4096,
		MaxSeries:      256,
		FiredRetention: 30 * 24 * time.Hour,
		MaxFired:       256,

		SendRetention:         30 * 24 * time.Hour,
		MaxSends:              512,
		MaxPurchaseCategories: 256,
		MaxTimers:             64,
		MaxExposures:          64,
		MaxConversions:        16,
	}
	custom := profile.Limits{
		Retention:      time.Hour,
		MinuteSpan:     time.Minute,
		HourSpan:       time.Hour,
		MaxFuture:      time.Second,
		DedupWindow:    2 * time.Hour,
		DedupMax:       10,
		MaxSeries:      3,
		FiredRetention: 48 * time.Hour,
		MaxFired:       7,

		SendRetention:         7 * 24 * time.Hour,
		MaxSends:              5,
		MaxPurchaseCategories: 2,
		MaxTimers:             4,
		MaxExposures:          3,
		MaxConversions:        2,
	}
	tests := []struct {
		name string
		in   profile.Limits
		want profile.Limits
	}{
		{"zero value gets every default", profile.Limits{}, want},
		{"negative values get defaults", profile.Limits{
			Retention: -1, MinuteSpan: -1, HourSpan: -1, MaxFuture: -1, DedupMax: -1,
			MaxSeries: -1, FiredRetention: -1, MaxFired: -1,
			SendRetention: -1, MaxSends: -1, MaxPurchaseCategories: -1, MaxTimers: -1,
			MaxExposures: -1, MaxConversions: -1,
		}, want},
		{"set values are kept", custom, custom},
		{"only zero fields are filled, spans cut to the retention", profile.Limits{Retention: time.Hour, MaxFired: 1}, func() profile.Limits {
			l := want
			l.Retention, l.MinuteSpan, l.HourSpan, l.MaxFired = time.Hour, time.Hour, time.Hour, 1
			return l
		}()},
		{"minute span cut to the hour span", profile.Limits{MinuteSpan: 48 * time.Hour, HourSpan: 36 * time.Hour}, func() profile.Limits {
			l := want
			l.MinuteSpan, l.HourSpan = 36*time.Hour, 36*time.Hour
			return l
		}()},
		{"the deprecated dedup window is kept as given", profile.Limits{DedupWindow: time.Hour}, func() profile.Limits {
			l := want
			l.DedupWindow = time.Hour
			return l
		}()},
		{"idempotent", want, want},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHashEventID(t *testing.T) {
	// FNV-1a 64 offset basis and a published test vector: the hash is part
	// of the stored format, so it must never change.
	tests := []struct {
		name string
		id   string
		want uint64
	}{
		{"empty", "", 0xcbf29ce484222325},
		{"a", "a", 0xaf63dc4c8601ec8c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := profile.HashEventID(tt.id); got != tt.want {
				t.Errorf("HashEventID(%q) = %#x, want %#x", tt.id, got, tt.want)
			}
		})
	}
}

func TestCount(t *testing.T) {
	// Applied at t0+2m so that the 12:01 event is within MaxFuture; counted
	// at now = 12:00:30, in the middle of a minute.
	applyAt := t0.Add(2 * time.Minute)
	now := t0.Add(30 * time.Second)
	var p profile.Profile
	mustApply(t, &p, applyAt, defaults,
		ev("e1", "view", "shoes", t0.Add(-30*time.Minute-time.Second)), // 11:29:59
		ev("e2", "view", "shoes", t0.Add(-30*time.Minute)),             // 11:30:00
		ev("e3", "view", "hats", t0.Add(-15*time.Minute)),              // 11:45:00
		ev("e4", "view", "shoes", t0.Add(-time.Minute)),                // 11:59:00
		ev("e5", "view", "shoes", t0.Add(10*time.Second)),              // 12:00:10
		ev("e6", "view", "shoes", t0.Add(50*time.Second)),              // 12:00:50, after now, same minute
		ev("e7", "view", "shoes", t0.Add(time.Minute)),                 // 12:01:00, after now's minute
		ev("e8", "view", "", t0.Add(-5*time.Minute)),                   // 11:55, no category
		ev("e9", "purchase", "shoes", t0.Add(-10*time.Minute)),         // 11:50
		ev("e10", "view", "shoes", t0.Add(-23*time.Hour)),              // 13:00 yesterday
	)

	tests := []struct {
		name     string
		typ      string
		category string
		window   time.Duration
		now      time.Time
		want     int64
	}{
		// The window starts at the minute containing now-window (11:30 for a
		// 30m window at 12:00:30), so 11:30:00 is in and 11:29:59 is out.
		{"30m one category", "view", "shoes", 30 * time.Minute, now, 4},
		{"31m reaches 11:29", "view", "shoes", 31 * time.Minute, now, 5},
		{"30m all categories", "view", "", 30 * time.Minute, now, 6},
		{"empty category name counted by all", "view", "", 6 * time.Minute, now, 4},
		{"other category", "view", "hats", 30 * time.Minute, now, 1},
		{"14m excludes 11:45", "view", "hats", 14 * time.Minute, now, 0},
		{"15m includes 11:45", "view", "hats", 15 * time.Minute, now, 1},
		// 1m from 12:00:30 starts in minute 11:59: up to one minute more
		// than the window, as documented.
		{"1m", "view", "shoes", time.Minute, now, 3},
		{"zero window is the current minute", "view", "shoes", 0, now, 2},
		{"other type", "purchase", "", time.Hour, now, 1},
		{"unknown type", "click", "", time.Hour, now, 0},
		{"unknown category", "view", "socks", time.Hour, now, 0},
		{"24h window", "view", "", 24 * time.Hour, now, 8},
		{"24h window other type and category", "purchase", "shoes", 24 * time.Hour, now, 1},
		{"minute after now counted once now moves", "view", "shoes", 0, t0.Add(90 * time.Second), 1},
		{"at 12:01:30 the 30m window has everything since 11:31", "view", "shoes", 30 * time.Minute, t0.Add(90 * time.Second), 4},
		{"now before every event", "view", "", time.Hour, t0.Add(-48 * time.Hour), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Count(tt.typ, tt.category, tt.window, tt.now); got != tt.want {
				t.Errorf("Count(%q, %q, %v, %s) = %d, want %d", tt.typ, tt.category, tt.window, tt.now.Format(time.TimeOnly), got, tt.want)
			}
		})
	}
}

func TestCountOutOfOrderEvents(t *testing.T) {
	// 60 events spread over 20 minutes (some minutes empty, some with
	// several events), applied in order and in three shuffled orders: the
	// series must be identical and sorted, and every minute must count its
	// own events.
	var events []profile.Event
	perMinute := map[int64]int64{}
	for i := range 60 {
		at := t0.Add(-time.Duration(i*i%20) * time.Minute).Add(time.Duration(i) * time.Second)
		events = append(events, ev(fmt.Sprintf("e%d", i), "view", "c", at))
		perMinute[at.Unix()/60]++
	}
	var inOrder profile.Profile
	mustApply(t, &inOrder, t0, defaults, events...)

	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("shuffle %d", seed), func(t *testing.T) {
			shuffled := append([]profile.Event(nil), events...)
			r := rand.New(rand.NewPCG(seed, seed))
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			var p profile.Profile
			mustApply(t, &p, t0, defaults, shuffled...)
			if len(p.Series) != 1 {
				t.Fatalf("got %d series, want 1", len(p.Series))
			}
			if !reflect.DeepEqual(p.Series, inOrder.Series) {
				t.Errorf("series differ from in-order application:\n got %+v\nwant %+v", p.Series, inOrder.Series)
			}
			ms := p.Series[0].Minutes
			for i := 1; i < len(ms); i++ {
				if ms[i-1].At >= ms[i].At {
					t.Fatalf("minutes not strictly ascending at %d: %+v", i, ms)
				}
			}
			if len(ms) != len(perMinute) {
				t.Errorf("got %d minute buckets, want %d", len(ms), len(perMinute))
			}
			for minute, want := range perMinute {
				// A zero window counts only the minute containing now.
				at := time.Unix(minute*60+59, 0)
				if got := p.Count("view", "c", 0, at); got != want {
					t.Errorf("minute %s: Count = %d, want %d", at.UTC().Format(time.TimeOnly), got, want)
				}
			}
		})
	}
}

func TestSeriesStaySorted(t *testing.T) {
	// Series are kept sorted by (type, category) whatever the order they
	// are created in; the codec relies on it.
	var p profile.Profile
	mustApply(t, &p, t0, defaults,
		ev("1", "view", "b", t0), ev("2", "click", "", t0), ev("3", "view", "a", t0),
		ev("4", "view", "", t0), ev("5", "add", "z", t0), ev("6", "view", "b", t0),
	)
	var got []string
	for _, s := range p.Series {
		got = append(got, s.Type+"/"+s.Category)
	}
	want := []string{"add/z", "click/", "view/", "view/a", "view/b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("series keys = %q, want %q", got, want)
	}
}

func TestCheck(t *testing.T) {
	now := t0
	custom := profile.Limits{Retention: time.Hour, MaxFuture: 30 * time.Second}.WithDefaults()
	tests := []struct {
		name       string
		limits     profile.Limits
		at         time.Time
		wantOK     bool
		wantReason []string // substrings of the reason
	}{
		{"now", defaults, now, true, nil},
		{"exactly at the retention", defaults, now.Add(-defaults.Retention), true, nil},
		{"just older than the retention", defaults, now.Add(-defaults.Retention - time.Millisecond), false,
			[]string{"older than the retention", "90d", "2024-12-10T11:59:59Z"}},
		{"zero time", defaults, time.Time{}, false, []string{"older than the retention of 90d"}},
		{"exactly at max future", defaults, now.Add(defaults.MaxFuture), true, nil},
		{"just past max future", defaults, now.Add(defaults.MaxFuture + time.Millisecond), false,
			[]string{"5m0s in the future", "2025-03-10T12:05:00Z"}},
		{"custom retention", custom, now.Add(-61 * time.Minute), false, []string{"retention of 1h"}},
		{"custom max future", custom, now.Add(31 * time.Second), false, []string{"more than 30s in the future"}},
		{"reason time is UTC", defaults, now.Add(time.Hour).In(time.FixedZone("X", 3600)), false,
			[]string{"2025-03-10T13:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ev("e", "view", "", tt.at)
			r, ok := tt.limits.Check(&e, now)
			if ok != tt.wantOK {
				t.Fatalf("Check ok = %v, want %v (result %+v)", ok, tt.wantOK, r)
			}
			if ok {
				if r != (profile.Result{}) {
					t.Errorf("accepted event has result %+v, want zero", r)
				}
				return
			}
			if r.Status != profile.Rejected {
				t.Errorf("status = %v, want rejected", r.Status)
			}
			for _, s := range tt.wantReason {
				if !strings.Contains(r.Reason, s) {
					t.Errorf("reason %q does not contain %q", r.Reason, s)
				}
			}

			// ApplyEvent rejects it the same way and remembers nothing, not
			// even the id: a corrected re-send must be accepted.
			var p profile.Profile
			if got := p.ApplyEvent(&e, now, tt.limits); got != r {
				t.Errorf("ApplyEvent = %+v, want %+v", got, r)
			}
			if !reflect.DeepEqual(p, profile.Profile{}) {
				t.Errorf("rejected event changed the profile: %+v", p)
			}
		})
	}
}

func TestApplyEventDuplicate(t *testing.T) {
	tests := []struct {
		name  string
		again profile.Event
	}{
		{"same event", ev("e1", "purchase", "shoes", t0)},
		{"same id, other content", profile.Event{
			ID: "e1", UserID: "u1", Type: "unsubscribe", Channel: "sms", OccurredAt: t0.Add(time.Minute),
			Value: 99, Attributes: map[string]string{"tz": "Asia/Tokyo"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p profile.Profile
			first := ev("e1", "purchase", "shoes", t0)
			first.Value = 12.5
			first.Attributes = map[string]string{"tz": "Europe/Paris"}
			mustApply(t, &p, t0, defaults, first)
			before := profile.Encode(&p)

			if r := p.ApplyEvent(&tt.again, t0.Add(time.Second), defaults); r != (profile.Result{Status: profile.Duplicate}) {
				t.Fatalf("second ApplyEvent = %+v, want duplicate", r)
			}
			if after := profile.Encode(&p); !bytes.Equal(before, after) {
				t.Errorf("duplicate changed the profile:\nbefore %+v", p)
			}
			if p.Total("purchase") != 1 || p.PurchaseValue != 12.5 || len(p.Seen) != 1 {
				t.Errorf("after duplicate: total %d, value %v, %d seen; want 1, 12.5, 1",
					p.Total("purchase"), p.PurchaseValue, len(p.Seen))
			}
			if !p.HasSeen("e1") || p.HasSeen("e2") {
				t.Errorf("HasSeen(e1) = %v, HasSeen(e2) = %v; want true, false", p.HasSeen("e1"), p.HasSeen("e2"))
			}
		})
	}
}

func TestApplyEventTotalsAndLastSeen(t *testing.T) {
	var p profile.Profile
	mustApply(t, &p, t0, defaults,
		ev("1", "view", "a", t0.Add(-time.Minute)),
		ev("2", "view", "b", t0.Add(-3*time.Minute)), // older: LastSeen keeps the latest
		ev("3", "click", "", t0.Add(-2*time.Minute)),
	)
	if got := p.Total("view"); got != 2 {
		t.Errorf("Total(view) = %d, want 2", got)
	}
	if got := p.Total("nope"); got != 0 {
		t.Errorf("Total(nope) = %d, want 0", got)
	}
	if at, ok := p.LastSeenAt("view"); !ok || !at.Equal(t0.Add(-time.Minute)) {
		t.Errorf("LastSeenAt(view) = %v, %v; want %v, true", at, ok, t0.Add(-time.Minute))
	}
	if _, ok := p.LastSeenAt("nope"); ok {
		t.Error("LastSeenAt(nope) found a time")
	}
	// Totals are all-time: compaction of the counts does not lower them.
	p.Compact(t0.Add(defaults.Retention+48*time.Hour), defaults)
	if got := p.Total("view"); got != 2 {
		t.Errorf("after compaction Total(view) = %d, want 2", got)
	}
	if len(p.Series) != 0 {
		t.Errorf("after compaction %d series remain, want none", len(p.Series))
	}
}

func TestPurchases(t *testing.T) {
	tests := []struct {
		name      string
		events    []profile.Event
		wantCount uint64
		wantValue float64
	}{
		{"none", nil, 0, 0},
		{"sum", []profile.Event{
			{ID: "1", Type: "purchase", Value: 10.5, OccurredAt: t0},
			{ID: "2", Type: "purchase", Value: 20.25, OccurredAt: t0},
			{ID: "3", Type: "purchase", Value: 0, OccurredAt: t0},
		}, 3, 30.75},
		{"saturates instead of reaching Infinity", []profile.Event{
			{ID: "1", Type: "purchase", Value: 1.7e308, OccurredAt: t0},
			{ID: "2", Type: "purchase", Value: 1.7e308, OccurredAt: t0},
		}, 2, profile.MaxValueTotal},
		{"saturates below too", []profile.Event{
			{ID: "1", Type: "purchase", Value: -1.7e308, OccurredAt: t0},
			{ID: "2", Type: "purchase", Value: -1.7e308, OccurredAt: t0},
		}, 2, -profile.MaxValueTotal},
		{"refund as negative value", []profile.Event{
			{ID: "1", Type: "purchase", Value: 40, OccurredAt: t0},
			{ID: "2", Type: "purchase", Value: -15, OccurredAt: t0},
		}, 2, 25},
		{"values of other types ignored", []profile.Event{
			{ID: "1", Type: "view", Value: 100, OccurredAt: t0},
			{ID: "2", Type: "purchase", Value: 1, OccurredAt: t0},
		}, 1, 1},
		{"duplicate purchase not summed", []profile.Event{
			{ID: "1", Type: "purchase", Value: 7, OccurredAt: t0},
			{ID: "1", Type: "purchase", Value: 7, OccurredAt: t0},
		}, 1, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p profile.Profile
			for i := range tt.events {
				p.ApplyEvent(&tt.events[i], t0, defaults)
			}
			if p.PurchaseCount != tt.wantCount || p.PurchaseValue != tt.wantValue {
				t.Errorf("purchases = %d, %v; want %d, %v", p.PurchaseCount, p.PurchaseValue, tt.wantCount, tt.wantValue)
			}
			if p.Total("purchase") != tt.wantCount {
				t.Errorf("Total(purchase) = %d, want %d", p.Total("purchase"), tt.wantCount)
			}
		})
	}
}

func sent(id, channel, offer string, at time.Time) profile.Event {
	e := profile.Event{ID: id, UserID: "u1", Type: profile.TypeMessageSent, Channel: channel, OccurredAt: at}
	if offer != "" {
		e.Attributes = map[string]string{profile.AttrOfferID: offer, "other": "ignored"}
	}
	return e
}

func TestSends(t *testing.T) {
	var p profile.Profile
	// Out of order on purpose: the log is kept in event-time order.
	mustApply(t, &p, t0, defaults,
		sent("1", "sms", "phones-coupon", t0.Add(-2*time.Hour)),
		sent("2", "push", "cart-reminder", t0.Add(-20*time.Hour)),
		sent("3", "sms", "", t0.Add(-23*time.Hour)),
		sent("4", "", "phones-coupon", t0.Add(-time.Hour)),
		sent("5", "sms", "phones-coupon", t0.Add(2*time.Minute)), // a little in the future
	)
	// A duplicate is not a second send.
	if r := p.ApplyEvent(&[]profile.Event{sent("1", "sms", "phones-coupon", t0.Add(-2*time.Hour))}[0], t0, defaults); r.Status != profile.Duplicate {
		t.Fatalf("duplicate message_sent = %v", r.Status)
	}
	for i := 1; i < len(p.SendLog); i++ {
		if p.SendLog[i-1].At.After(p.SendLog[i].At) {
			t.Fatalf("send log not oldest first: %+v", p.SendLog)
		}
	}
	tests := []struct {
		name    string
		channel string
		since   time.Time
		want    int
	}{
		{"every channel, a day", "", t0.Add(-24 * time.Hour), 5},
		{"sms, a day", "sms", t0.Add(-24 * time.Hour), 3},
		{"sms, since exactly the oldest sms: it counts", "sms", t0.Add(-23 * time.Hour), 3},
		{"sms, just after the oldest sms", "sms", t0.Add(-23*time.Hour + time.Millisecond), 2},
		{"push", "push", t0.Add(-24 * time.Hour), 1},
		{"push, window too short", "push", t0.Add(-19 * time.Hour), 0},
		{"a future send counts", "sms", t0, 1},
		{"unknown channel", "email", t0.Add(-24 * time.Hour), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Sends(tt.channel, tt.since); got != tt.want {
				t.Errorf("Sends(%q, %v) = %d, want %d", tt.channel, tt.since, got, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		offer  string
		want   time.Time
		wantOK bool
	}{
		{"phones-coupon", t0.Add(2 * time.Minute), true},
		{"cart-reminder", t0.Add(-20 * time.Hour), true},
		{"never-sent", time.Time{}, false},
		{"", time.Time{}, false},
	} {
		if got, ok := p.LastSent(tt.offer); ok != tt.wantOK || !got.Equal(tt.want) {
			t.Errorf("LastSent(%q) = %v, %v; want %v, %v", tt.offer, got, ok, tt.want, tt.wantOK)
		}
	}
	if got := p.Total(profile.TypeMessageSent); got != 5 {
		t.Errorf("Total(message_sent) = %d, want 5 (sends are counted like any event too)", got)
	}
	var empty profile.Profile
	if n := empty.Sends("", time.Time{}); n != 0 {
		t.Errorf("empty profile: Sends = %d", n)
	}
}

func TestLastPurchase(t *testing.T) {
	var p profile.Profile
	mustApply(t, &p, t0, defaults,
		profile.Event{ID: "1", Type: profile.TypePurchase, Category: "phones", Value: 10, OccurredAt: t0.Add(-time.Hour)},
		profile.Event{ID: "2", Type: profile.TypePurchase, Category: "phones", Value: 10, OccurredAt: t0.Add(-3 * time.Hour)}, // late: not the latest
		profile.Event{ID: "3", Type: profile.TypePurchase, Category: "hats", OccurredAt: t0.Add(-2 * time.Hour)},
		profile.Event{ID: "4", Type: profile.TypePurchase, OccurredAt: t0},                  // no category
		profile.Event{ID: "5", Type: "view", Category: "shoes", OccurredAt: t0},             // not a purchase
		profile.Event{ID: "6", Type: "refund", Category: "hats", Value: -3, OccurredAt: t0}, // not a purchase either
	)
	for _, tt := range []struct {
		category string
		want     time.Time
		wantOK   bool
	}{
		{"phones", t0.Add(-time.Hour), true},
		{"hats", t0.Add(-2 * time.Hour), true},
		{"shoes", time.Time{}, false},
		{"", time.Time{}, false},
	} {
		if got, ok := p.LastPurchase(tt.category); ok != tt.wantOK || !got.Equal(tt.want) {
			t.Errorf("LastPurchase(%q) = %v, %v; want %v, %v", tt.category, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestCompactSendsAndPurchases(t *testing.T) {
	t.Run("send retention is independent of the count retention", func(t *testing.T) {
		l := profile.Limits{SendRetention: 7 * 24 * time.Hour, Retention: 24 * time.Hour}.WithDefaults()
		var p profile.Profile
		mustApply(t, &p, t0, l,
			sent("old", "push", "a", t0.Add(-20*time.Hour)),
			sent("new", "push", "b", t0.Add(-time.Hour)),
		)
		// Six days later the counts are gone (24h retention) but the
		// sends are still there for a weekly cap.
		later := t0.Add(6 * 24 * time.Hour)
		p.Compact(later, l)
		if len(p.Series) != 0 {
			t.Errorf("series kept past the count retention: %+v", p.Series)
		}
		if got := p.Sends("push", later.Add(-7*24*time.Hour)); got != 2 {
			t.Errorf("Sends(push, 7d) after 6 days = %d, want 2", got)
		}
		// At the retention horizon exactly the send stays; just past it, it goes.
		p.Compact(t0.Add(-20*time.Hour+7*24*time.Hour), l)
		if len(p.SendLog) != 2 {
			t.Errorf("send at the horizon dropped: %+v", p.SendLog)
		}
		p.Compact(t0.Add(-20*time.Hour+7*24*time.Hour+time.Millisecond), l)
		if want := []profile.Send{{Channel: "push", OfferID: "b", At: t0.Add(-time.Hour)}}; !reflect.DeepEqual(p.SendLog, want) {
			t.Errorf("sends = %+v, want %+v", p.SendLog, want)
		}
		p.Compact(t0.Add(30*24*time.Hour), l)
		if p.SendLog != nil {
			t.Errorf("sends past the retention: %+v", p.SendLog)
		}
	})

	t.Run("MaxSends keeps the newest", func(t *testing.T) {
		l := profile.Limits{MaxSends: 3}.WithDefaults()
		var p profile.Profile
		for i := range 6 {
			// Applied newest first: the cap is by event time, not arrival.
			mustApply(t, &p, t0, l, sent(fmt.Sprint(i), "sms", fmt.Sprint("o", i), t0.Add(-time.Duration(i)*time.Minute)))
		}
		p.Compact(t0, l)
		var got []string
		for _, s := range p.SendLog {
			got = append(got, s.OfferID)
		}
		if want := []string{"o2", "o1", "o0"}; !reflect.DeepEqual(got, want) {
			t.Errorf("kept %q, want %q", got, want)
		}
		if _, ok := p.LastSent("o3"); ok {
			t.Error("a dropped send is still found")
		}
	})

	t.Run("purchase retention and MaxPurchaseCategories", func(t *testing.T) {
		l := profile.Limits{SendRetention: 48 * time.Hour, MaxPurchaseCategories: 2}.WithDefaults()
		var p profile.Profile
		buy := func(id, category string, at time.Time) profile.Event {
			return profile.Event{ID: id, Type: profile.TypePurchase, Category: category, OccurredAt: at}
		}
		mustApply(t, &p, t0, l,
			buy("1", "a", t0.Add(-3*time.Hour)),
			buy("2", "b", t0.Add(-2*time.Hour)),
			buy("3", "d", t0.Add(-time.Hour)),
			buy("4", "c", t0.Add(-time.Hour)),
		)
		p.Compact(t0, l)
		// Newest first, ties by category: c and d stay.
		want := map[string]time.Time{"c": t0.Add(-time.Hour), "d": t0.Add(-time.Hour)}
		if !reflect.DeepEqual(p.LastPurchases, want) {
			t.Errorf("last purchases = %v, want %v", p.LastPurchases, want)
		}
		p.Compact(t0.Add(47*time.Hour), l)
		if len(p.LastPurchases) != 2 {
			t.Errorf("last purchases dropped before the retention: %v", p.LastPurchases)
		}
		p.Compact(t0.Add(48*time.Hour), l)
		if p.LastPurchases != nil {
			t.Errorf("last purchases past the retention: %v", p.LastPurchases)
		}
		if p.PurchaseCount != 4 {
			t.Errorf("PurchaseCount = %d, want 4 (all-time)", p.PurchaseCount)
		}
	})

	t.Run("the compacted profile round-trips", func(t *testing.T) {
		l := profile.Limits{MaxSends: 2}.WithDefaults()
		var p profile.Profile
		for i := range 5 {
			mustApply(t, &p, t0, l, sent(fmt.Sprint(i), "sms", "", t0.Add(time.Duration(i)*time.Second)))
		}
		p.Compact(t0, l)
		q, err := profile.Decode(profile.Encode(&p))
		if err != nil || !reflect.DeepEqual(q.SendLog, p.SendLog) {
			t.Errorf("round trip: %v, %+v; want %+v", err, q, p.SendLog)
		}
	})
}

func TestConsent(t *testing.T) {
	type consentEvent struct {
		typ     string
		channel string
		at      time.Duration // after t0
	}
	sub := func(ch string, at time.Duration) consentEvent { return consentEvent{profile.TypeSubscribe, ch, at} }
	unsub := func(ch string, at time.Duration) consentEvent { return consentEvent{profile.TypeUnsubscribe, ch, at} }
	tests := []struct {
		name   string
		events []consentEvent // in processing order
		want   map[string]bool
	}{
		{"never unsubscribed", nil, map[string]bool{"sms": true, "email": true}},
		{"unsubscribe sms", []consentEvent{unsub("sms", 0)}, map[string]bool{"sms": false, "email": true}},
		{"global unsubscribe with empty channel", []consentEvent{unsub("", 0)}, map[string]bool{"sms": false, "email": false}},
		{"global unsubscribe with channel all", []consentEvent{unsub("all", 0)}, map[string]bool{"sms": false, "email": false, "push": false}},
		{"subscribe sms after global unsubscribe", []consentEvent{unsub("all", 1), sub("sms", 2)},
			map[string]bool{"sms": true, "email": false}},
		{"global unsubscribe after sms subscribe", []consentEvent{sub("sms", 1), unsub("", 2)},
			map[string]bool{"sms": false, "email": false}},
		{"global subscribe after sms unsubscribe", []consentEvent{unsub("sms", 1), sub("all", 2)},
			map[string]bool{"sms": true, "email": true}},
		{"resubscribe sms", []consentEvent{unsub("sms", 1), sub("sms", 2)}, map[string]bool{"sms": true}},
		{"out of order: older subscribe arrives late", []consentEvent{unsub("sms", 2), sub("sms", 1)},
			map[string]bool{"sms": false, "email": true}},
		{"out of order: older unsubscribe arrives late", []consentEvent{sub("sms", 2), unsub("sms", 1)},
			map[string]bool{"sms": true}},
		{"out of order: older global subscribe arrives late", []consentEvent{unsub("all", 3), sub("", 1)},
			map[string]bool{"sms": false, "email": false}},
		{"out of order: older global unsubscribe does not beat newer sms subscribe",
			[]consentEvent{sub("sms", 2), unsub("all", 1)}, map[string]bool{"sms": true, "email": false}},
		{"out of order: newer global unsubscribe beats older sms subscribe",
			[]consentEvent{unsub("all", 3), sub("sms", 2)}, map[string]bool{"sms": false, "email": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p profile.Profile
			for i, c := range tt.events {
				e := profile.Event{ID: fmt.Sprint(i), Type: c.typ, Channel: c.channel, OccurredAt: t0.Add(c.at * time.Minute)}
				if r := p.ApplyEvent(&e, t0.Add(time.Hour), defaults); r.Status != profile.Applied {
					t.Fatalf("event %d: %+v", i, r)
				}
			}
			for ch, want := range tt.want {
				if got := p.Consented(ch); got != want {
					t.Errorf("Consented(%q) = %v, want %v (consent %+v)", ch, got, want, p.Consent)
				}
			}
			for ch := range p.Consent {
				if ch == "" || ch == "all" {
					t.Errorf("consent stored under %q, want %q", ch, profile.AllChannels)
				}
			}
		})
	}
}

func TestRememberedAttributes(t *testing.T) {
	withAttrs := func(id string, at time.Time, attrs map[string]string) profile.Event {
		e := ev(id, "view", "", at)
		e.Attributes = attrs
		return e
	}
	tests := []struct {
		name   string
		events []profile.Event // in processing order
		want   map[string]string
	}{
		{"none", []profile.Event{withAttrs("1", t0, nil)}, map[string]string{"tz": ""}},
		{"tz remembered", []profile.Event{withAttrs("1", t0, map[string]string{"tz": "Europe/Paris"})},
			map[string]string{"tz": "Europe/Paris"}},
		{"other attributes not remembered", []profile.Event{withAttrs("1", t0, map[string]string{"color": "red", "tz": "UTC"})},
			map[string]string{"color": "", "tz": "UTC"}},
		{"event without tz keeps it", []profile.Event{
			withAttrs("1", t0, map[string]string{"tz": "Europe/Paris"}),
			withAttrs("2", t0.Add(time.Minute), nil),
		}, map[string]string{"tz": "Europe/Paris"}},
		{"newer tz replaces", []profile.Event{
			withAttrs("1", t0, map[string]string{"tz": "Europe/Paris"}),
			withAttrs("2", t0.Add(time.Minute), map[string]string{"tz": "America/New_York"}),
		}, map[string]string{"tz": "America/New_York"}},
		{"duplicate does not replace", []profile.Event{
			withAttrs("1", t0, map[string]string{"tz": "Europe/Paris"}),
			withAttrs("1", t0.Add(time.Minute), map[string]string{"tz": "Asia/Tokyo"}),
		}, map[string]string{"tz": "Europe/Paris"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p profile.Profile
			for i := range tt.events {
				p.ApplyEvent(&tt.events[i], t0.Add(time.Hour), defaults)
			}
			for k, want := range tt.want {
				if got := p.Attr(k); got != want {
					t.Errorf("Attr(%q) = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestRememberedAttributesLatestByEventTime checks the documented rule of
// rememberedAttributes, "latest by event time wins", for an event that
// arrives late. (Consent and LastSeen follow that rule; see the report of
// the test author if this fails.)
func TestRememberedAttributesLatestByEventTime(t *testing.T) {
	var p profile.Profile
	newer := ev("new", "view", "", t0)
	newer.Attributes = map[string]string{"tz": "America/New_York"}
	older := ev("old", "view", "", t0.Add(-time.Hour))
	older.Attributes = map[string]string{"tz": "Europe/Paris"}
	mustApply(t, &p, t0, defaults, newer, older)
	if got := p.Attr("tz"); got != "America/New_York" {
		t.Errorf("Attr(tz) = %q after a late, older event; want the newer event's %q", got, "America/New_York")
	}
}

func TestMarkFired(t *testing.T) {
	var p profile.Profile
	if _, ok := p.FiredAt("k"); ok {
		t.Fatal("FiredAt on an empty profile found a mark")
	}
	p.MarkFired("k", t0)
	p.MarkFired("k", t0.Add(-time.Hour)) // older: ignored
	if at, ok := p.FiredAt("k"); !ok || !at.Equal(t0) {
		t.Errorf("FiredAt(k) = %v, %v; want %v, true", at, ok, t0)
	}
	p.MarkFired("k", t0.Add(time.Hour))
	if at, _ := p.FiredAt("k"); !at.Equal(t0.Add(time.Hour)) {
		t.Errorf("FiredAt(k) = %v, want %v", at, t0.Add(time.Hour))
	}
}

func TestCompact(t *testing.T) {
	t.Run("tiers drop buckets past their spans, then empty series", func(t *testing.T) {
		l := profile.Limits{Retention: 3 * time.Hour, HourSpan: 2 * time.Hour, MinuteSpan: 30 * time.Minute}.WithDefaults()
		var p profile.Profile
		mustApply(t, &p, t0, l,
			ev("1", "view", "a", t0.Add(-10*time.Minute)),  // 11:50: every tier
			ev("2", "view", "a", t0.Add(-50*time.Minute)),  // 11:10: before the minute span
			ev("3", "view", "b", t0.Add(-150*time.Minute)), // 09:30: before the hour span too
		)
		p.Compact(t0, l)
		minute, hour, day := t0.Unix()/60, t0.Unix()/3600, t0.Unix()/86400
		want := []profile.Series{
			{Type: "view", Category: "a",
				Minutes: []profile.Bucket{{At: minute - 10, Count: 1}},
				Hours:   []profile.Bucket{{At: hour - 1, Count: 2}},
				Days:    []profile.Bucket{{At: day, Count: 2}}},
			{Type: "view", Category: "b", Days: []profile.Bucket{{At: day, Count: 1}}},
		}
		if !reflect.DeepEqual(p.Series, want) {
			t.Errorf("series = %+v\nwant %+v", p.Series, want)
		}
		for _, c := range []struct {
			cat    string
			window time.Duration
			want   int64
			tier   profile.Tier
		}{
			{"a", 20 * time.Minute, 1, profile.TierMinute},
			{"a", time.Hour, 2, profile.TierHour},    // from 11:00, before the minutes
			{"b", 3 * time.Hour, 1, profile.TierDay}, // from 09:00, before the hours
			{"", 150 * time.Minute, 3, profile.TierDay},
		} {
			if got := p.Count("view", c.cat, c.window, t0); got != c.want {
				t.Errorf("Count(view, %q, %v) = %d, want %d", c.cat, c.window, got, c.want)
			}
			if got := p.TierFor(c.window, t0); got != c.tier {
				t.Errorf("TierFor(%v) = %v, want %v", c.window, got, c.tier)
			}
		}
		p.Compact(t0.Add(36*time.Hour), l)
		if len(p.Series) != 0 {
			t.Errorf("series = %+v, want none once every bucket is past the retention", p.Series)
		}
		if p.Total("view") != 3 {
			t.Errorf("Total(view) = %d, want 3 (totals are all-time)", p.Total("view"))
		}
	})

	t.Run("DedupMax forgets the oldest days and then refuses their events", func(t *testing.T) {
		l := profile.Limits{DedupMax: 4}.WithDefaults()
		const day = 24 * time.Hour
		var p profile.Profile
		mustApply(t, &p, t0, l,
			ev("a1", "view", "", t0.Add(-2*day)), ev("a2", "view", "", t0.Add(-2*day)),
			ev("b1", "view", "", t0.Add(-day)), ev("b2", "view", "", t0.Add(-day)),
			ev("c1", "view", "", t0), ev("c2", "view", "", t0),
		)
		p.Compact(t0, l)
		if n := p.RememberedIDs(); n != 4 {
			t.Fatalf("%d ids remembered, want 4", n)
		}
		for _, id := range []string{"a1", "a2"} {
			if p.HasSeen(id) {
				t.Errorf("HasSeen(%s) = true after its day was forgotten", id)
			}
		}
		// Neither a re-sent event nor a new one of a forgotten day is
		// applied: the profile can no longer tell them apart.
		for _, id := range []string{"a1", "a9"} {
			e := ev(id, "view", "", t0.Add(-2*day))
			if r := p.ApplyEvent(&e, t0, l); r.Status != profile.Rejected || r.Code != profile.RejectDedupHorizon || !strings.Contains(r.Reason, "deduplication horizon") {
				t.Errorf("ApplyEvent(%s of a forgotten day) = %v %s %q, want rejected at the dedup horizon", id, r.Status, r.Code, r.Reason)
			}
		}
		// A single day over DedupMax keeps its latest ids.
		mustApply(t, &p, t0, l, ev("c3", "view", "", t0), ev("c4", "view", "", t0), ev("c5", "view", "", t0))
		if e := ev("c1", "view", "", t0); p.ApplyEvent(&e, t0, l).Status != profile.Duplicate {
			t.Errorf("a re-sent event is not a duplicate before compaction")
		}
		p.Compact(t0, l)
		for id, want := range map[string]bool{"b1": false, "c1": false, "c2": true, "c5": true} {
			if p.HasSeen(id) != want {
				t.Errorf("after a day over the bound: HasSeen(%s) = %v, want %v", id, !want, want)
			}
		}
		if n := p.RememberedIDs(); n != 4 {
			t.Errorf("%d ids remembered, want 4", n)
		}
	})

	t.Run("an id is remembered as long as its event can be accepted", func(t *testing.T) {
		l := defaults
		var p profile.Profile
		old := ev("old", "view", "", t0.Add(-l.Retention+time.Minute))
		mustApply(t, &p, t0, l, old, ev("new", "view", "", t0))
		// Hour by hour for five days: a re-sent event is a duplicate or
		// too old, never applied again.
		for h := range 5 * 24 {
			now := t0.Add(time.Duration(h) * time.Hour)
			p.Compact(now, l)
			e := old
			r := p.ApplyEvent(&e, now, l)
			if r.Status == profile.Applied || r.Status == profile.Rejected && r.Code != profile.RejectTooOld {
				t.Fatalf("at +%dh the re-sent event was %v %s %q", h, r.Status, r.Code, r.Reason)
			}
		}
		if p.HasSeen("old") || !p.HasSeen("new") {
			t.Errorf("after five days: HasSeen(old) = %v, HasSeen(new) = %v; want false, true", p.HasSeen("old"), p.HasSeen("new"))
		}
		if got := p.Count("view", "", l.Retention, t0.Add(5*24*time.Hour)); got != 1 {
			t.Errorf("Count over the retention = %d, want 1", got)
		}
	})

	t.Run("MaxSeries drops the least recently updated", func(t *testing.T) {
		l := profile.Limits{MaxSeries: 3}.WithDefaults()
		var p profile.Profile
		// Latest minutes: e at -1m, a at -2m, d at -3m, b at -4m, c at -5m.
		mustApply(t, &p, t0, l,
			ev("a1", "view", "a", t0.Add(-30*time.Minute)),
			ev("a2", "view", "a", t0.Add(-2*time.Minute)),
			ev("b", "view", "b", t0.Add(-4*time.Minute)),
			ev("c", "view", "c", t0.Add(-5*time.Minute)),
			ev("d", "view", "d", t0.Add(-3*time.Minute)),
			ev("e", "click", "e", t0.Add(-1*time.Minute)),
		)
		p.Compact(t0, l)
		var got []string
		for _, s := range p.Series {
			got = append(got, s.Type+"/"+s.Category)
		}
		if want := []string{"click/e", "view/a", "view/d"}; !reflect.DeepEqual(got, want) {
			t.Errorf("series kept = %q, want %q (sorted by key)", got, want)
		}
		if got := p.Count("view", "a", time.Hour, t0); got != 2 {
			t.Errorf("kept series lost minutes: Count(view, a) = %d, want 2", got)
		}
		// The compacted profile is still a valid stored profile.
		if _, err := profile.Decode(profile.Encode(&p)); err != nil {
			t.Errorf("Decode(Encode(compacted)) = %v", err)
		}
	})

	t.Run("Fired retention and MaxFired", func(t *testing.T) {
		l := profile.Limits{FiredRetention: 24 * time.Hour, MaxFired: 2}.WithDefaults()
		var p profile.Profile
		p.MarkFired("expired", t0.Add(-25*time.Hour))
		p.MarkFired("at horizon", t0.Add(-24*time.Hour))
		p.MarkFired("old", t0.Add(-2*time.Hour))
		p.MarkFired("new-b", t0.Add(-time.Hour))
		p.MarkFired("new-a", t0.Add(-time.Hour))
		p.Compact(t0, l)
		// Newest first, ties broken by key: new-a and new-b stay.
		want := map[string]time.Time{"new-a": t0.Add(-time.Hour), "new-b": t0.Add(-time.Hour)}
		if !reflect.DeepEqual(p.Fired, want) {
			t.Errorf("fired = %v, want %v", p.Fired, want)
		}

		var q profile.Profile
		q.MarkFired("expired", t0.Add(-25*time.Hour))
		q.MarkFired("at horizon", t0.Add(-24*time.Hour))
		q.Compact(t0, l)
		if want := map[string]time.Time{"at horizon": t0.Add(-24 * time.Hour)}; !reflect.DeepEqual(q.Fired, want) {
			t.Errorf("fired = %v, want %v (retention only)", q.Fired, want)
		}
	})

	t.Run("empty profile", func(t *testing.T) {
		var p profile.Profile
		p.Compact(t0, defaults)
		if !reflect.DeepEqual(p, profile.Profile{}) {
			t.Errorf("Compact changed an empty profile: %+v", p)
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		l := profile.Limits{DedupMax: 8, MaxSeries: 2, MaxFired: 1, Retention: time.Hour}.WithDefaults()
		var p profile.Profile
		for i := range 8 {
			mustApply(t, &p, t0, l, ev(fmt.Sprint(i), "view", fmt.Sprint(i%4), t0.Add(-time.Duration(i*5)*time.Minute)))
			p.MarkFired(fmt.Sprint(i), t0.Add(-time.Duration(i)*time.Minute))
		}
		p.Compact(t0, l)
		once := profile.Encode(&p)
		p.Compact(t0, l)
		if twice := profile.Encode(&p); !bytes.Equal(once, twice) {
			t.Errorf("second Compact changed the profile")
		}
	})
}

func TestActionID(t *testing.T) {
	base := profile.ActionID("user-1", "event-1", "trigger-1")
	if again := profile.ActionID("user-1", "event-1", "trigger-1"); again != base {
		t.Errorf("ActionID not deterministic: %q then %q", base, again)
	}
	if !strings.HasPrefix(base, "a_") || len(base) != 2+32 || strings.Trim(base[2:], "0123456789abcdef") != "" {
		t.Errorf("ActionID = %q, want a_ and 32 lower-case hex digits", base)
	}
	if strings.Contains(base, "user-1") {
		t.Errorf("ActionID %q reveals the user id", base)
	}
	tests := []struct {
		name                  string
		user, event, trigger  string
		otherUser, otherEvent string
		otherTrigger          string
	}{
		{"other user", "user-1", "event-1", "trigger-1", "user-2", "event-1", "trigger-1"},
		{"other event", "user-1", "event-1", "trigger-1", "user-1", "event-2", "trigger-1"},
		{"other trigger", "user-1", "event-1", "trigger-1", "user-1", "event-1", "trigger-2"},
		{"separator between user and event", "ab", "c", "t", "a", "bc", "t"},
		{"separator between event and trigger", "u", "ab", "c", "u", "a", "bc"},
		{"fields are not interchangeable", "x", "y", "z", "y", "x", "z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := profile.ActionID(tt.user, tt.event, tt.trigger)
			b := profile.ActionID(tt.otherUser, tt.otherEvent, tt.otherTrigger)
			if a == b {
				t.Errorf("ActionID(%q, %q, %q) == ActionID(%q, %q, %q) == %q",
					tt.user, tt.event, tt.trigger, tt.otherUser, tt.otherEvent, tt.otherTrigger, a)
			}
		})
	}
}

func TestFormatDuration(t *testing.T) {
	const day = 24 * time.Hour
	for d, want := range map[time.Duration]string{
		0: "0s", 45 * time.Second: "45s", 90 * time.Second: "2m", 2 * time.Hour: "2h",
		49*time.Hour + 30*time.Minute: "2d1h30m", 7 * day: "7d", 90 * day: "90d",
		24*time.Hour + time.Minute: "1d1m", -3 * time.Minute: "-3m",
	} {
		if got := profile.FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

package profile_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nudge-dm/nudge/profile"
)

// TestLongMemory: an event days old is applied and counted by a week's
// window; re-sent, a duplicate; older than the retention, rejected.
func TestLongMemory(t *testing.T) {
	const day = 24 * time.Hour
	var p profile.Profile
	old := ev("three-days", "view", "phones", t0.Add(-3*day))
	mustApply(t, &p, t0, defaults, old, ev("today", "view", "phones", t0.Add(-time.Minute)))
	p.Compact(t0, defaults)
	if got := p.Count("view", "phones", 7*day, t0); got != 2 {
		t.Errorf("7d count = %d, want 2", got)
	}
	if got := p.Count("view", "phones", 24*time.Hour, t0); got != 1 {
		t.Errorf("24h count = %d, want 1", got)
	}
	if r := p.ApplyEvent(&old, t0, defaults); r.Status != profile.Duplicate {
		t.Errorf("re-sent event = %v %q, want duplicate", r.Status, r.Reason)
	}
	tooOld := ev("91-days", "view", "phones", t0.Add(-91*day))
	if r := p.ApplyEvent(&tooOld, t0, defaults); r.Status != profile.Rejected || r.Code != profile.RejectTooOld {
		t.Errorf("91 days old = %v %s %q, want rejected too old", r.Status, r.Code, r.Reason)
	}
}

// TestBackfillExact applies events spread over 30 days in random order,
// in batches with compaction between them as the store does, twice: the
// second pass is all duplicates, and every window counts what the
// documented semantics say: the buckets of the tier the window reaches,
// from the one containing its start.
func TestBackfillExact(t *testing.T) {
	const day = 24 * time.Hour
	r := rand.New(rand.NewPCG(1, 2))
	now := t0.Add(17*time.Minute + 23*time.Second)
	var events []profile.Event
	for i := range 3000 {
		at := now.Add(-time.Duration(r.Int64N(int64(30 * day))))
		cat := fmt.Sprint("c", r.IntN(5))
		events = append(events, profile.Event{ID: fmt.Sprint("e", i), Type: "view", Category: cat, OccurredAt: at, Value: float64(r.IntN(10))})
	}
	var p profile.Profile
	for pass := range 2 {
		r.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
		for i := range events {
			res := p.ApplyEvent(&events[i], now, defaults)
			want := profile.Applied
			if pass == 1 {
				want = profile.Duplicate
			}
			if res.Status != want {
				t.Fatalf("pass %d: %s = %v %q, want %v", pass, events[i].ID, res.Status, res.Reason, want)
			}
			if i%100 == 99 {
				p.Compact(now, defaults)
			}
		}
		p.Compact(now, defaults)
	}
	b, err := profile.Decode(profile.Encode(&p))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []time.Duration{30 * time.Minute, 24 * time.Hour, 25 * time.Hour, 3 * day, 7 * day, 8 * day, 9 * day, 30 * day, 90 * day} {
		tier := b.TierFor(w, now)
		sec := tier.Seconds()
		from, to := floor(now.Add(-w).Unix(), sec), floor(now.Unix(), sec)
		var want int64
		var wantSum float64
		cats := map[string]bool{}
		for _, e := range events {
			if k := floor(e.OccurredAt.Unix(), sec); k >= from && k <= to {
				want++
				wantSum += e.Value
				cats[e.Category] = true
			}
		}
		if got := b.Count("view", "", w, now); got != want {
			t.Errorf("Count(%v) from the %s tier = %d, want %d", w, tier, got, want)
		}
		if got := b.Sum("view", "", w, now); got != wantSum {
			t.Errorf("Sum(%v) = %v, want %v", w, got, wantSum)
		}
		if got := b.Distinct("view", w, now); got != int64(len(cats)) {
			t.Errorf("Distinct(%v) = %d, want %d", w, got, len(cats))
		}
	}
	if tier := b.TierFor(24*time.Hour, now); tier != profile.TierMinute {
		t.Errorf("a 24h window is read from the %s tier, want minutes", tier)
	}
	if tier := b.TierFor(7*day, now); tier != profile.TierHour {
		t.Errorf("a 7d window is read from the %s tier, want hours", tier)
	}
	if n := b.RememberedIDs(); n != len(events) {
		t.Errorf("%d ids remembered, want %d", n, len(events))
	}
}

func floor(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func TestQueries(t *testing.T) {
	now := t0
	var p profile.Profile
	buy := func(id string, at time.Time, v float64) profile.Event {
		e := ev(id, "purchase", "shoes", at)
		e.Value = v
		return e
	}
	mustApply(t, &p, now, defaults,
		ev("v1", "view", "shoes", now.Add(-70*time.Minute)),
		ev("v2", "view", "hats", now.Add(-65*time.Minute)),
		ev("v3", "view", "", now.Add(-64*time.Minute)),
		ev("v4", "view", "shoes", now.Add(-10*time.Minute)),
		buy("p1", now.Add(-9*time.Minute), 20),
		buy("p2", now.Add(-3*24*time.Hour), 30.5),
		ev("v5", "view", "socks", now.Add(-3*24*time.Hour)),
	)
	p.Compact(now, defaults)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"Sum 1h", p.Sum("purchase", "", time.Hour, now), 20.0},
		{"Sum 7d", p.Sum("purchase", "shoes", 7*24*time.Hour, now), 50.5},
		{"Sum other category", p.Sum("purchase", "hats", 7*24*time.Hour, now), 0.0},
		{"Distinct 2h: shoes, hats (no empty)", p.Distinct("view", 2*time.Hour, now), int64(2)},
		{"Distinct 7d", p.Distinct("view", 7*24*time.Hour, now), int64(3)},
		{"Distinct 5m", p.Distinct("view", 5*time.Minute, now), int64(0)},
		// Minutes -70, -65, -64 | -10, -9: a 30m gap splits them.
		{"Sessions 2h gap 30m", p.Sessions(2*time.Hour, 30*time.Minute, now), int64(2)},
		{"Sessions 2h gap 2m", p.Sessions(2*time.Hour, 2*time.Minute, now), int64(3)},
		{"Sessions 2h gap 1h", p.Sessions(2*time.Hour, time.Hour, now), int64(1)},
		{"Sessions none", p.Sessions(time.Minute, time.Minute, now), int64(0)},
		// Hours: the one of -3d, 10:00-11:00 and 11:00-12:00 of today.
		{"Sessions 7d gap 30m, per hour", p.Sessions(7*24*time.Hour, 30*time.Minute, now), int64(2)},
		{"ActiveDays 7d", p.ActiveDays(7*24*time.Hour, now), int64(2)},
		{"ActiveDays 1d", p.ActiveDays(24*time.Hour, now), int64(1)},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestDecodeBeforeTiers reads a profile stored before the tiers: its
// minutes fill the hours and days, and its ids, kept by processing time,
// are still found.
func TestDecodeBeforeTiers(t *testing.T) {
	minute := t0.Unix() / 60
	var hashes, at []byte
	var prev int64
	for i, ms := range []int64{t0.UnixMilli() - 1000, t0.UnixMilli()} {
		hashes = protowire.AppendFixed64(hashes, profile.HashEventID(fmt.Sprint("id", i)))
		at = protowire.AppendVarint(at, protowire.EncodeZigZag(ms-prev))
		prev = ms
	}
	b := stored(
		bytesField(nil, fSeries, seriesMsg("view", "a", packedMinutes(minute-61, 2, minute, 1))),
		bytesField(nil, fSeenHashes, hashes),
		bytesField(nil, fSeenAt, at),
	)
	p, err := profile.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !p.HasSeen("id0") || !p.HasSeen("id1") || p.HasSeen("id2") {
		t.Errorf("ids of the old form not found: %+v", p.Seen)
	}
	if got := p.Count("view", "a", 7*24*time.Hour, t0); got != 3 {
		t.Errorf("Count(7d) = %d, want 3", got)
	}
	s := p.Series[0]
	if len(s.Hours) != 2 || len(s.Days) != 1 || s.Days[0].Count != 3 {
		t.Errorf("hours %+v, days %+v: want two hours and one day of 3", s.Hours, s.Days)
	}
	// Once applied to, the profile is stored in the tiered form.
	mustApply(t, p, t0, defaults, ev("id3", "view", "a", t0.Add(-2*24*time.Hour)))
	q, err := profile.Decode(profile.Encode(p))
	if err != nil {
		t.Fatal(err)
	}
	if !equalProfiles(p, q) {
		t.Errorf("re-encoded profile differs:\n got %+v\nwant %+v", q, p)
	}
	if got := q.Count("view", "a", 7*24*time.Hour, t0); got != 4 {
		t.Errorf("Count(7d) after a backfilled event = %d, want 4", got)
	}
}

// TestHeavyUserBound builds the largest profile the default limits let
// counts and ids grow to (every series with a bucket in every minute,
// hour and day it keeps, every id) and checks it against the bound the
// docs state (docs/rules.md, "What the profile remembers").
func TestHeavyUserBound(t *testing.T) {
	l := defaults
	p := &profile.Profile{Version: 1, UpdatedAt: t0}
	minutes, hours := int64(l.MinuteSpan/time.Minute), int64(l.HourSpan/time.Hour)
	days := int64(l.Retention/(24*time.Hour)) + 1
	for i := range l.MaxSeries {
		s := profile.Series{Type: "view", Category: fmt.Sprintf("category-%03d", i)}
		for m := range minutes {
			s.Minutes = append(s.Minutes, profile.Bucket{At: t0.Unix()/60 - minutes + m, Count: 3})
		}
		for h := range hours {
			s.Hours = append(s.Hours, profile.Bucket{At: t0.Unix()/3600 - hours + h, Count: 100})
		}
		for d := range days {
			s.Days = append(s.Days, profile.Bucket{At: t0.Unix()/86400 - days + d, Count: 1000})
		}
		p.Series = append(p.Series, s)
	}
	var ids int
	for d := range days {
		day := profile.SeenDay{Day: t0.Unix()/86400 - days + d}
		for range l.DedupMax / int(days) {
			day.Hashes = append(day.Hashes, uint64(ids)*0x9e3779b97f4a7c15)
			ids++
		}
		slices.Sort(day.Hashes)
		p.Seen = append(p.Seen, day)
	}
	n := len(profile.Encode(p))
	const bound = 1_000_000 // the figure docs/rules.md states
	t.Logf("heaviest counts and ids: %d bytes (%d series, %d ids)", n, len(p.Series), ids)
	if n > bound {
		t.Errorf("the heaviest profile encodes to %d bytes, over the documented %d", n, bound)
	}
}

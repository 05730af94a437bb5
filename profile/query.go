package profile

import (
	"slices"
	"time"
)

// The queries of this file are what features for models need beyond
// Count: sums of event values, distinct categories, sessions and active
// days, each over a window ending at now, read from the tier of counts
// the window reaches (see Count and tiers.go).

// Sum returns the sum of the values of the events of the given type and
// category (every category when empty) in the window ending at now, with
// Count's buckets.
func (p *Profile) Sum(typ, category string, window time.Duration, now time.Time) float64 {
	var v float64
	p.window(typ, category, window, now, func(_ *Series, b *Bucket) { v += b.Value })
	return saturate(v)
}

// Distinct returns how many distinct non-empty categories the events of
// the type had in the window ending at now, with Count's buckets.
func (p *Profile) Distinct(typ string, window time.Duration, now time.Time) int64 {
	var n int64
	var last *Series
	p.window(typ, "", window, now, func(s *Series, _ *Bucket) {
		if s != last && s.Category != "" {
			n++
		}
		last = s
	})
	return n
}

// Sessions returns how many sessions the user had in the window ending at
// now: runs of buckets with events (of any type) separated by at least
// gap of buckets without any, in the tier the window reaches (so a gap
// shorter than an hour is not seen in a window longer than the minute
// span). gap must be positive.
func (p *Profile) Sessions(window, gap time.Duration, now time.Time) int64 {
	t, active := p.activeBuckets(window, now)
	if len(active) == 0 {
		return 0
	}
	gapSec := int64(gap / time.Second)
	n := int64(1)
	for i := 1; i < len(active); i++ {
		if (active[i]-active[i-1]-1)*t.Seconds() >= gapSec {
			n++
		}
	}
	return n
}

// ActiveDays returns on how many UTC days of the window ending at now the
// user had events of any type, from the day containing now-window to
// now's.
func (p *Profile) ActiveDays(window time.Duration, now time.Time) int64 {
	return int64(len(p.active(TierDay, bucketOf(TierDay, now.Add(-window)), bucketOf(TierDay, now))))
}

// activeBuckets returns the tier the window reaches and its buckets with
// events of any type in the window, ascending.
func (p *Profile) activeBuckets(window time.Duration, now time.Time) (Tier, []int64) {
	t, from := p.tierFor(now.Add(-window))
	return t, p.active(t, from, bucketOf(t, now))
}

// active returns the buckets of tier t from from to to (inclusive) with
// events of any type, ascending and without duplicates.
func (p *Profile) active(t Tier, from, to int64) []int64 {
	var out []int64
	for i := range p.Series {
		for _, b := range p.Series[i].since(t, from) {
			if b.At > to {
				break
			}
			if j, found := slices.BinarySearch(out, b.At); !found {
				out = slices.Insert(out, j, b.At)
			}
		}
	}
	return out
}

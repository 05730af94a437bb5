package profile

import (
	"math"
	"sort"
	"time"
)

// Counts are kept in three tiers of buckets of event time, each a
// resolution and a span: per minute for Limits.MinuteSpan (24 h), per
// hour for Limits.HourSpan (7 days) and per UTC day for Limits.Retention
// (90 days). Every event is counted in every tier whose span reaches back
// to it when it is applied, so each tier is complete on its own: a
// window is read from one tier, the finest that holds every event the
// window reaches (Profile.tierFor), and counts every bucket from the one
// containing its start to the one containing its end. A window is so
// exact to the resolution of the tier it reaches: at most a minute more
// for a window within the minute span, an hour more within the hour span,
// a day more beyond.
//
// Tiers overlap on purpose: rolling minutes up into hours as they age
// would store each event once, but would make a window's edge depend on
// when the profile was last compacted.

// Tier is a resolution of the counts.
type Tier int

// The tiers, finest first.
const (
	TierMinute Tier = iota
	TierHour
	TierDay
	numTiers
)

// tierSeconds are the lengths of the tiers' buckets.
var tierSeconds = [numTiers]int64{60, 3600, 86400}

// Seconds is the length of the tier's buckets, in seconds.
func (t Tier) Seconds() int64 { return tierSeconds[t] }

func (t Tier) String() string {
	switch t {
	case TierMinute:
		return "minute"
	case TierHour:
		return "hour"
	case TierDay:
		return "day"
	}
	return "unknown"
}

// Bucket counts the events of one bucket of event time.
type Bucket struct {
	// At is the bucket's start in units of its tier since the Unix epoch
	// (Unix minutes, hours or UTC days).
	At    int64
	Count uint32
	// Value is the sum of the events' values (saturated like
	// Profile.PurchaseValue).
	Value float64
}

// bucketOf returns the bucket of t in the tier.
func bucketOf(tier Tier, t time.Time) int64 {
	return floorDiv(t.Unix(), tierSeconds[tier])
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func unixMinute(t time.Time) int64 { return bucketOf(TierMinute, t) }

// unixDay is the UTC day of t, in days since the Unix epoch.
func unixDay(t time.Time) int64 { return bucketOf(TierDay, t) }

// Buckets returns the series' buckets of a tier, ascending by At.
func (s *Series) Buckets(t Tier) []Bucket { return *s.tier(t) }

func (s *Series) tier(t Tier) *[]Bucket {
	switch t {
	case TierMinute:
		return &s.Minutes
	case TierHour:
		return &s.Hours
	}
	return &s.Days
}

// add counts one event of the given value in bucket at of the tier.
func (s *Series) add(t Tier, at int64, value float64) {
	bs := s.tier(t)
	// Events mostly arrive in order: search from the end.
	j := len(*bs)
	for j > 0 && (*bs)[j-1].At > at {
		j--
	}
	if j > 0 && (*bs)[j-1].At == at {
		b := &(*bs)[j-1]
		if b.Count < math.MaxUint32 {
			b.Count++
		}
		b.Value = saturate(b.Value + value)
		return
	}
	*bs = append(*bs, Bucket{})
	copy((*bs)[j+1:], (*bs)[j:])
	(*bs)[j] = Bucket{At: at, Count: 1, Value: value}
}

// since returns the buckets of the tier from bucket from on.
func (s *Series) since(t Tier, from int64) []Bucket {
	bs := *s.tier(t)
	i := sort.Search(len(bs), func(i int) bool { return bs[i].At >= from })
	return bs[i:]
}

// dropBefore forgets the tier's buckets before from.
func (s *Series) dropBefore(t Tier, from int64) {
	bs := s.tier(t)
	k := 0
	for k < len(*bs) && (*bs)[k].At < from {
		k++
	}
	if k == 0 {
		return
	}
	n := copy(*bs, (*bs)[k:])
	*bs = (*bs)[:n]
	if n == 0 {
		*bs = nil
	}
}

// empty reports whether the series counts nothing any more.
func (s *Series) empty() bool {
	return len(s.Minutes) == 0 && len(s.Hours) == 0 && len(s.Days) == 0
}

// latest is the latest bucket of the series, in Unix seconds, for
// choosing which series to forget first.
func (s *Series) latest() int64 {
	var l int64 = math.MinInt64
	for t := TierMinute; t < numTiers; t++ {
		if bs := *s.tier(t); len(bs) > 0 {
			l = max(l, bs[len(bs)-1].At*tierSeconds[t])
		}
	}
	return l
}

// tierFor returns the finest tier that holds every event at or after
// from, and from's bucket in it: the minute tier from MinuteFrom on, the
// hour tier from HourFrom on, else the day tier.
func (p *Profile) tierFor(from time.Time) (Tier, int64) {
	if m := bucketOf(TierMinute, from); m >= p.MinuteFrom {
		return TierMinute, m
	}
	if h := bucketOf(TierHour, from); h >= p.HourFrom {
		return TierHour, h
	}
	return TierDay, bucketOf(TierDay, from)
}

// TierFor returns the tier a window ending at now is read from, for
// documentation and explanations.
func (p *Profile) TierFor(window time.Duration, now time.Time) Tier {
	t, _ := p.tierFor(now.Add(-window))
	return t
}

// window calls fn for every bucket of the matching series in the window
// ending at now, from the tier the window reaches. An empty category
// matches every category.
func (p *Profile) window(typ, category string, window time.Duration, now time.Time, fn func(s *Series, b *Bucket)) {
	t, from := p.tierFor(now.Add(-window))
	to := bucketOf(t, now)
	for i := range p.Series {
		s := &p.Series[i]
		if s.Type != typ || (category != "" && s.Category != category) {
			continue
		}
		bs := s.since(t, from)
		for j := range bs {
			if bs[j].At > to {
				break
			}
			fn(s, &bs[j])
		}
	}
}

// advanceTiers records that events are applied at processing time now:
// from now on the minute and hour tiers hold only the events within
// their spans.
func (p *Profile) advanceTiers(now time.Time, l Limits) {
	p.MinuteFrom = max(p.MinuteFrom, bucketOf(TierMinute, now.Add(-l.MinuteSpan)))
	p.HourFrom = max(p.HourFrom, bucketOf(TierHour, now.Add(-l.HourSpan)))
}

// addCount counts an event in every tier that holds its time.
func (p *Profile) addCount(typ, category string, at time.Time, value float64) {
	i := sort.Search(len(p.Series), func(i int) bool {
		s := &p.Series[i]
		return s.Type > typ || (s.Type == typ && s.Category >= category)
	})
	if i == len(p.Series) || p.Series[i].Type != typ || p.Series[i].Category != category {
		p.Series = append(p.Series, Series{})
		copy(p.Series[i+1:], p.Series[i:])
		p.Series[i] = Series{Type: typ, Category: category}
	}
	s := &p.Series[i]
	if m := bucketOf(TierMinute, at); m >= p.MinuteFrom {
		s.add(TierMinute, m, value)
	}
	if h := bucketOf(TierHour, at); h >= p.HourFrom {
		s.add(TierHour, h, value)
	}
	s.add(TierDay, bucketOf(TierDay, at), value)
}

// compactSeries forgets the buckets past their tiers' spans, series left
// empty, and the least recently active series beyond the cap.
func (p *Profile) compactSeries(now time.Time, l Limits) {
	if len(p.Series) == 0 {
		return
	}
	p.advanceTiers(now, l)
	oldestDay := bucketOf(TierDay, now.Add(-l.Retention))
	kept := p.Series[:0]
	for _, s := range p.Series {
		s.dropBefore(TierMinute, p.MinuteFrom)
		s.dropBefore(TierHour, p.HourFrom)
		s.dropBefore(TierDay, oldestDay)
		if !s.empty() {
			kept = append(kept, s)
		}
	}
	clear(p.Series[len(kept):])
	p.Series = kept
	if len(p.Series) <= l.MaxSeries {
		return
	}
	latest := make([]int64, len(p.Series))
	for i := range p.Series {
		latest[i] = p.Series[i].latest()
	}
	order := make([]int, len(p.Series))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return latest[order[a]] > latest[order[b]] })
	drop := make([]bool, len(p.Series))
	for _, i := range order[l.MaxSeries:] {
		drop[i] = true
	}
	kept = p.Series[:0]
	for i, s := range p.Series {
		if !drop[i] {
			kept = append(kept, s)
		}
	}
	clear(p.Series[len(kept):])
	p.Series = kept
}

// rollUp fills the hour and day tiers from the minutes, for profiles
// stored before the tiers existed (their minutes held every event they
// had accepted and still kept).
func (s *Series) rollUp() {
	if len(s.Minutes) == 0 {
		return // not such a series: it has no minutes to roll up
	}
	// Such profiles had no other tier: any found are not theirs.
	s.Hours, s.Days = nil, nil
	for _, m := range s.Minutes {
		for t := TierHour; t < numTiers; t++ {
			at := floorDiv(m.At, tierSeconds[t]/60) // minutes to hours or days, without overflow
			bs := s.tier(t)
			if n := len(*bs); n > 0 && (*bs)[n-1].At == at {
				b := &(*bs)[n-1]
				b.Count = uint32(min(uint64(b.Count)+uint64(m.Count), math.MaxUint32))
				b.Value = saturate(b.Value + m.Value)
				continue
			}
			*bs = append(*bs, Bucket{At: at, Count: m.Count, Value: m.Value})
		}
	}
}
